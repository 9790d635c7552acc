"""Weights of graphs exported without materializing the model ("weightless" export).

A weightless export traces a module whose parameters live on the meta device, so no weight is
ever in memory. Every initializer of the graph then gets its bytes from one of:

- ``checkpoint``: the checkpoint's own safetensors byte range, when the stored dtype and shape
  are the graph's. The file is hard-linked into the component's ``weights/`` folder (ONNX
  Runtime refuses external data outside the model's folder, and symlinks that lead out of it),
  so nothing is copied; with ``copy_weights`` the range is streamed into ``model.onnx.data``.
- ``computed``: a tensor that must change (a dtype cast, a non-persistent buffer computed from
  the config, a declared transform such as a fused LoRA or a QR basis), computed one at a time
  and appended to ``model.onnx.data``.

Memory stays bounded by the largest single tensor. ``weights.json`` beside the graph records the
source of every initializer; :func:`check_weights` proves, at export and in ``zoo parity``, that
each initializer's name, dtype, shape and byte range are the checkpoint's tensor or the recorded
transformation of it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from zoo.contract import Transform, WeightlessModule
from zoo.errors import ArtifactError, CheckpointError, ExportError
from zoo.infra.hashing import file_sha256

WEIGHTS_DIR = "weights"  # hard links to the checkpoint files, inside the component folder
WEIGHT_MAP = "weights.json"
WEIGHT_MAP_FORMAT = 2  # 2: linked files by the sha256 of all their bytes (1 sampled large files)
DATA_FILE = "model.onnx.data"
ALIGN = 4096  # ONNX Runtime memory-maps external data at page-aligned offsets

# safetensors dtype names -> torch dtypes (the ones diffusion checkpoints use)
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_TORCH_NAMES = {v: str(v).removeprefix("torch.") for v in SAFETENSORS_DTYPES.values()}
MAX_HEADER = 100 << 20  # the safetensors format's own bound on the JSON header


def dtype_name(dtype: torch.dtype) -> str:
    return _TORCH_NAMES.get(dtype) or str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


# --------------------------------------------------------------------------------------
# Reading safetensors checkpoints without loading them
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lies in a safetensors file (``offset`` from the start of the file)."""

    file: Path
    key: str
    dtype: str  # torch dtype name
    shape: tuple[int, ...]
    offset: int
    length: int


def read_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file, from its header alone; :class:`CheckpointError`
    for a file that is missing, not safetensors, or shorter than its header says (truncated)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"weights file {path} is {size} bytes: not a safetensors file (truncated?)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(
                f"weights file {path} has no readable safetensors header (truncated or not safetensors)"
            )
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise CheckpointError(f"weights file {path} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"weights file {path} has a corrupt safetensors header")
    out: dict[str, StoredTensor] = {}
    end = 0
    ranges = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, stop = (int(v) for v in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"weights file {path}: tensor {key!r} has an unreadable header entry {entry!r}"
            ) from None
        numel = math.prod(shape)
        if any(d < 0 for d in shape) or not 0 <= begin <= stop or stop - begin != numel * dtype.itemsize:
            raise CheckpointError(
                f"weights file {path}: tensor {key!r} has a corrupt header entry "
                f"(shape {list(shape)} of {entry['dtype']} at bytes {begin}..{stop})"
            )
        out[key] = StoredTensor(path, key, dtype_name(dtype), shape, 8 + n + begin, stop - begin)
        ranges.append((begin, stop, key))
        end = max(end, stop)
    ranges.sort()
    for (_, stop, a), (begin, _, b) in zip(ranges, ranges[1:]):
        if begin < stop:
            raise CheckpointError(f"weights file {path}: tensors {a!r} and {b!r} overlap (a corrupt header)")
    if 8 + n + end > size:
        raise CheckpointError(
            f"weights file {path} is truncated: it is {size} bytes, its header needs {8 + n + end}; re-download it"
        )
    return out


def _variant_free(paths: Iterable[Path]) -> list[Path]:
    """``model.safetensors`` but not ``model.fp16.safetensors``: from_pretrained's default choice."""
    return sorted(p for p in paths if "." not in p.name.removesuffix(".safetensors"))


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files a module folder's weights are in, as ``from_pretrained`` picks them:
    the files an index names (each must exist), else the single non-variant file(s)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    indexes = sorted(
        p for p in folder.glob("*.safetensors.index.json") if "." not in p.name.removesuffix(".safetensors.index.json")
    )  # not model.fp16.safetensors.index.json
    if indexes:
        files: list[Path] = []
        for index in indexes:
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
                names = sorted(set(weight_map.values()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise CheckpointError(f"{index} is not a safetensors index (no weight_map)") from None
            for name in names:
                if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                    raise CheckpointError(f"{index} names {name!r}: expected the file name of a shard in {folder}")
                if not (folder / name).is_file():
                    raise CheckpointError(f"{index} names {name}, which is not in {folder}: a shard is missing")
                files.append(folder / name)
        return files
    files = _variant_free(folder.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        extra = f" (it has {', '.join(found)}: convert them to safetensors)" if found else ""
        raise CheckpointError(f"{folder} has no safetensors weights; a weightless export reads safetensors{extra}")
    return files


class StoredWeights:
    """Every tensor of a module's checkpoint files, by key, read one at a time on demand."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.tensors: dict[str, StoredTensor] = {}
        self.files: list[Path] = []
        for folder in folders:
            for file in checkpoint_files(folder):
                self.files.append(file)
                for key, t in read_header(file).items():
                    if key in self.tensors:
                        raise CheckpointError(f"tensor {key!r} is in both {self.tensors[key].file} and {file}")
                    self.tensors[key] = t

    def dominant_dtype(self) -> str:
        """The dtype most of the stored bytes are in (a checkpoint's own precision)."""
        totals: dict[str, int] = {}
        for t in self.tensors.values():
            if t.dtype in ("float32", "float16", "bfloat16"):
                totals[t.dtype] = totals.get(t.dtype, 0) + t.length
        return max(totals, key=totals.__getitem__) if totals else "float32"

    def read(self, key: str) -> torch.Tensor:
        """One stored tensor, read from its byte range (nothing else is loaded)."""
        t = self.tensors.get(key)
        if t is None:
            raise CheckpointError(f"no tensor {key!r} in {', '.join(map(str, sorted({f.parent for f in self.files})))}")
        return read_range(t.file, t.offset, t.length, t.dtype, t.shape)


def read_range(path: Path, offset: int, length: int, dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    with open(path, "rb") as f:
        f.seek(offset)
        data = bytearray(f.read(length))
    if len(data) != length:
        raise CheckpointError(f"weights file {path} is truncated at byte {offset + len(data)}")
    if not length:
        return torch.empty(shape, dtype=torch_dtype(dtype))
    return torch.frombuffer(data, dtype=torch_dtype(dtype)).reshape(shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes, without a copy (a view of its memory)."""
    t = t.detach().contiguous().cpu()
    return t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else memoryview(b"")


# --------------------------------------------------------------------------------------
# Building the weightless module and mapping graph initializers to their sources
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Where one initializer's bytes come from."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: str  # checkpoint | computed
    how: str  # what was done: "stored", "cast bfloat16 -> float32", "buffer", "transform: ..."
    key: str | None = None  # the module's state-dict key (checkpoint tensors, casts, transforms)
    stored: StoredTensor | None = None  # the checkpoint tensor it is or is computed from
    compute: Callable[[], torch.Tensor] | None = None


class WeightlessBuild:
    """A :class:`WeightlessModule` built: its module on the meta device, the real values of its
    buffers (computed from the config), and its checkpoint tensors, checked against each other
    before anything is traced."""

    def __init__(self, spec: WeightlessModule, what: str) -> None:
        self.spec = spec
        self.what = what
        self.stored = StoredWeights(spec.folders)
        module = spec.build()
        self.buffers = {
            k: b.detach().clone() for k, b in module.named_buffers(remove_duplicate=False) if b.device.type != "meta"
        }
        self.aliases = _aliases(module)
        self.prefixes: dict[str, str] = {}  # wrapper submodule path -> module path (set by the exporter)
        stored_keys = list(self.stored.tensors)
        self.keys = spec.rename(module, stored_keys) if spec.rename else {k: k for k in stored_keys}  # module -> stored
        self.module = torch.nn.Module.to(module, "meta").eval().requires_grad_(False)  # no diffusers dtype warning
        self._check()

    def _check(self) -> None:
        missing = []
        for key, tensor in self.module.state_dict(keep_vars=True).items():
            if key in self.spec.transforms:
                continue
            stored = self.lookup(key)
            if stored is None:
                if key in self.buffers:  # a persistent buffer the checkpoint does not hold: computed
                    continue
                missing.append(key)
                continue
            if tuple(stored.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{stored.file}: tensor {stored.key} has shape {tuple(stored.shape)}, the config of {self.what} "
                    f"gives {tuple(tensor.shape)}: the weights are of another model or the config was changed"
                )
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise CheckpointError(
                f"{self.what}: the checkpoint files in {', '.join(map(str, self.spec.folders))} lack {shown} "
                f"(another model's weights, or a layout that needs conversion at load time)"
            )

    def lookup(self, key: str) -> StoredTensor | None:
        """The stored tensor of the module's state-dict ``key`` (through renames and tied names)."""
        for k in (key, *self.aliases.get(key, ())):
            if k in self.keys:
                return self.stored.tensors[self.keys[k]]
        return None

    def read(self, key: str) -> torch.Tensor:
        """A stored tensor by the module's key (what transforms read)."""
        stored = self.lookup(key)
        if stored is None:
            raise CheckpointError(f"{self.what}: the checkpoint has no tensor for {key!r}")
        return self.stored.read(stored.key)


def _aliases(module: torch.nn.Module) -> dict[str, tuple[str, ...]]:
    """Tied parameters: every name of one tensor (a checkpoint stores one of them)."""
    groups: dict[int, list[str]] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return {n: tuple(x for x in names if x != n) for names in groups.values() if len(names) > 1 for n in names}


def module_prefixes(wrapper: torch.nn.Module, module: torch.nn.Module) -> dict[str, str]:
    """Wrapper submodule path -> the module's own path, for every submodule the wrapper holds
    of the module (by identity: the wrapper may hold ``transformer`` or ``motion_encoder``)."""
    own = {id(m): name for name, m in module.named_modules(remove_duplicate=False)}
    return {name: own[id(m)] for name, m in wrapper.named_modules(remove_duplicate=False) if id(m) in own}


def module_key(name: str, prefixes: Mapping[str, str]) -> str | None:
    """The module's state-dict key of a wrapper tensor name, through the longest submodule prefix."""
    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        prefix = ".".join(parts[:i])
        if prefix in prefixes:
            inner = prefixes[prefix]
            rest = ".".join(parts[i:])
            return f"{inner}.{rest}" if inner else rest
    return None


def plan_initializer(
    name: str,
    dtype: str,
    shape: tuple[int, ...],
    build: WeightlessBuild,
    derived: Mapping[str, Transform],
    constant: torch.Tensor | None,
) -> Plan:
    """Where the initializer ``name`` (a wrapper tensor name) gets its bytes."""
    read = build.read
    target = torch_dtype(dtype)

    def cast(fn: Callable[[], torch.Tensor], *, exact_shape: bool = True) -> Callable[[], torch.Tensor]:
        """The value in the graph's dtype; its shape must already be the graph's (a transform that
        returned Q for Q.T must fail, not be reshaped), except for buffers and constants the
        exporter may have flattened or given a unit dim."""

        def compute() -> torch.Tensor:
            value = fn()
            if tuple(value.shape) != tuple(shape):
                if exact_shape or value.numel() != math.prod(shape):
                    raise ExportError(f"initializer {name}: computed shape {tuple(value.shape)}, the graph has {shape}")
                value = value.reshape(shape)
            return value.to(target)

        return compute

    if name in derived:
        t = derived[name]
        return Plan(name, dtype, shape, "computed", f"transform: {t.what}", compute=cast(lambda: t.fn(read)))
    key = module_key(name, build.prefixes)
    if key is not None and key in build.spec.transforms:
        t = build.spec.transforms[key]
        return Plan(
            name,
            dtype,
            shape,
            "computed",
            f"transform: {t.what}",
            key=key,
            stored=build.lookup(key),
            compute=cast(lambda: t.fn(read)),
        )
    stored = build.lookup(key) if key is not None else None
    if stored is not None:
        if tuple(stored.shape) != tuple(shape):
            raise ExportError(
                f"initializer {name}: shape {shape} in the graph, {stored.shape} in {stored.file} ({stored.key})"
            )
        if stored.dtype == dtype:
            return Plan(name, dtype, shape, "checkpoint", "stored", key=key, stored=stored)
        return Plan(
            name,
            dtype,
            shape,
            "computed",
            f"cast {stored.dtype} -> {dtype}",
            key=key,
            stored=stored,
            compute=cast(lambda: build.stored.read(stored.key)),
        )
    if key is not None and key in build.buffers:
        value = build.buffers[key]
        return Plan(
            name,
            dtype,
            shape,
            "computed",
            "buffer computed from the config",
            key=key,
            compute=cast(lambda: value, exact_shape=False),
        )
    if constant is not None:
        return Plan(
            name,
            dtype,
            shape,
            "computed",
            "constant of the traced code",
            compute=cast(lambda: constant, exact_shape=False),
        )
    raise ExportError(
        f"initializer {name} of the graph is neither a checkpoint tensor, a buffer nor a declared transform "
        f"(module key {key!r}); this component cannot be exported weightless"
    )


# --------------------------------------------------------------------------------------
# Writing: links or copies, and the computed tensors, one at a time
# --------------------------------------------------------------------------------------


class DataWriter:
    """Appends tensors to ``model.onnx.data`` at page-aligned offsets, hashing each."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = open(path, "wb")
        self.offset = 0

    def _pad(self) -> None:
        pad = -self.offset % ALIGN
        if pad:
            self.file.write(b"\0" * pad)
            self.offset += pad

    def write(self, data: bytes | memoryview) -> tuple[int, int, str]:
        self._pad()
        start = self.offset
        self.file.write(data)
        self.offset += len(data)
        return start, len(data), hashlib.sha256(data).hexdigest()

    def copy_range(self, src: Path, offset: int, length: int) -> tuple[int, int, str]:
        """Stream a byte range of ``src`` (a checkpoint tensor) in, a block at a time."""
        self._pad()
        start, h = self.offset, hashlib.sha256()
        for block in range_blocks(src, offset, length):
            self.file.write(block)
            h.update(block)
        self.offset += length
        return start, length, h.hexdigest()

    def close(self) -> None:
        self.file.close()


def range_blocks(path: Path, offset: int, length: int, chunk: int = 64 << 20) -> Iterator[bytes]:
    """The bytes ``[offset, offset + length)`` of ``path``, ``chunk`` at a time (bounded memory)."""
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            block = f.read(min(chunk, left))
            if not block:
                raise CheckpointError(f"weights file {path} is truncated at byte {offset + length - left}")
            yield block
            left -= len(block)


def range_digest(path: Path, offset: int, length: int) -> str:
    h = hashlib.sha256()
    for block in range_blocks(path, offset, length):
        h.update(block)
    return h.hexdigest()


def link_refusal(src: Path, why: str) -> ExportError:
    return ExportError(
        f"cannot hard-link {src} into the export ({why}); give an --out on the checkpoint's filesystem, "
        f"or --copy-weights for a self-contained export"
    )


def check_linkable(files: Iterable[Path], dest: Path) -> None:
    """Hard links need the checkpoint on the export's filesystem: said before the trace, not after."""
    dest.mkdir(parents=True, exist_ok=True)
    device = os.stat(dest).st_dev
    for f in files:
        if os.stat(f).st_dev != device:
            raise link_refusal(f, "the export folder is on another filesystem")


def link_into(src: Path, folder: Path, used: dict[Path, str]) -> str:
    """Hard-link checkpoint file ``src`` into ``folder`` (once); its path relative to the graph."""
    src = src.resolve()
    if src in used:
        return used[src]
    name = src.name
    n = 1
    while any(v == f"{WEIGHTS_DIR}/{name}" for v in used.values()):
        name = f"{src.stem}-{n}{src.suffix}"
        n += 1
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, folder / name)
    except OSError as e:
        raise link_refusal(
            src, "the export folder is on another filesystem" if e.errno == errno.EXDEV else str(e.strerror)
        ) from None
    used[src] = f"{WEIGHTS_DIR}/{name}"
    return used[src]


def required_bytes(plans: Iterable[Plan], copy_weights: bool) -> int:
    """Bytes ``model.onnx.data`` will take (upper bound, alignment included)."""
    total = 0
    for p in plans:
        if p.source == "computed" or copy_weights:
            total += math.prod(p.shape) * torch_dtype(p.dtype).itemsize + ALIGN
    return total


def check_room(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise ExportError(
            f"not enough disk space at {folder}: the export's weights need {needed / 2**30:.2f} GiB, "
            f"{free / 2**30:.2f} GiB is free (nothing was written)"
        )


def write_weights(
    plans: list[Plan], dest: Path, *, copy_weights: bool, progress: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Write every initializer's bytes that the export holds itself (computed tensors; with
    ``copy_weights`` the checkpoint's too) into ``dest/model.onnx.data``, one at a time. Returns
    the weight map (``weights.json``); checkpoint tensors left in place point at their file by
    absolute path until :func:`link_checkpoint_files` links them in."""
    check_room(dest, required_bytes(plans, copy_weights))
    entries: dict[str, Any] = {}
    writer: DataWriter | None = None
    try:
        for p in plans:
            entry: dict[str, Any] = {"dtype": p.dtype, "shape": list(p.shape), "source": p.source, "how": p.how}
            if p.key is not None:
                entry["key"] = p.key
            if p.stored is not None:
                entry["stored"] = {"file": str(p.stored.file.resolve()), "key": p.stored.key, "dtype": p.stored.dtype}
            if p.source == "checkpoint" and not copy_weights:
                assert p.stored is not None
                entry["location"], entry["offset"], entry["length"] = (
                    str(p.stored.file.resolve()),
                    p.stored.offset,
                    p.stored.length,
                )
            else:
                writer = writer or DataWriter(dest / DATA_FILE)
                if p.source == "checkpoint":
                    assert p.stored is not None
                    offset, length, digest = writer.copy_range(p.stored.file, p.stored.offset, p.stored.length)
                else:
                    assert p.compute is not None
                    value = p.compute()
                    if tuple(value.shape) != p.shape or dtype_name(value.dtype) != p.dtype:
                        raise ExportError(
                            f"initializer {p.name}: computed {tuple(value.shape)} {value.dtype}, the graph "
                            f"has {p.shape} {p.dtype}"
                        )
                    offset, length, digest = writer.write(tensor_bytes(value))
                    del value
                entry["location"], entry["offset"], entry["length"], entry["sha256"] = DATA_FILE, offset, length, digest
            entries[p.name] = entry
            if progress:
                progress(1)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise ExportError(f"the disk at {dest} filled up while writing the weights; nothing was kept") from None
        raise
    finally:
        if writer:
            writer.close()
    return {"format": WEIGHT_MAP_FORMAT, "copy_weights": copy_weights, "files": {}, "initializers": entries}


def link_checkpoint_files(weight_map: dict[str, Any], dest: Path) -> None:
    """Hard-link each checkpoint file the map points at into ``dest/weights/`` and point the
    entries at the links (relative paths, as ONNX Runtime requires); record each file's sha256,
    taken before the link (a link changes the file's ctime, so hashing after it would read the
    whole file again)."""
    links: dict[Path, str] = {}
    digests: dict[Path, str] = {}
    for entry in weight_map["initializers"].values():
        if entry["location"] != DATA_FILE and Path(entry["location"]).is_absolute():
            src = Path(entry["location"]).resolve()
            if src not in digests:
                digests[src] = file_sha256(src)
            entry["location"] = link_into(src, dest / WEIGHTS_DIR, links)
    weight_map["files"] = {
        rel: {"source": str(src), "size": (dest / rel).stat().st_size, "sha256": digests[src]}
        for src, rel in links.items()
    }


def lazy_value(entry: Mapping[str, Any], dest: Path) -> Callable[[], torch.Tensor]:
    """The initializer's value read from where the map says (for the optimizer's small reads)."""
    path = Path(entry["location"]) if Path(entry["location"]).is_absolute() else dest / entry["location"]
    return lambda: read_range(path, entry["offset"], entry["length"], entry["dtype"], tuple(entry["shape"]))


# --------------------------------------------------------------------------------------
# The initializer check (at export and in zoo parity)
# --------------------------------------------------------------------------------------


def load_weight_map(folder: Path) -> dict[str, Any]:
    """``weights.json``, checked field by field (anyone may have edited it): every location it
    names is ``model.onnx.data`` or a linked file of ``files``, inside ``weights/``."""
    path = folder / WEIGHT_MAP
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("initializers"), dict):
            raise ValueError("no initializers")
        if data.get("format") != WEIGHT_MAP_FORMAT:
            raise ValueError(
                f"format {data.get('format')}, this zoo reads {WEIGHT_MAP_FORMAT}: an older zoo identified "
                f"large checkpoint files by a sample of their bytes"
            )
        files = data.get("files", {})
        if not isinstance(files, dict):
            raise ValueError("files is not a map")
        for rel, info in files.items():
            parts = PurePosixPath(rel).parts
            if (
                len(parts) != 2
                or parts[0] != WEIGHTS_DIR
                or parts[1] in (".", "..")
                or not isinstance(info, dict)
                or not isinstance(info.get("sha256"), str)
            ):
                raise ValueError(f"files names {rel!r}, expected {WEIGHTS_DIR}/FILE with its sha256")
        for name, e in data["initializers"].items():
            ok = (
                isinstance(e, dict)
                and isinstance(e.get("dtype"), str)
                and isinstance(e.get("shape"), list)
                and all(isinstance(d, int) for d in e["shape"])
                and e.get("source") in ("checkpoint", "computed")
                and isinstance(e.get("offset"), int)
                and isinstance(e.get("length"), int)
                and e["offset"] >= 0
                and (e.get("location") == DATA_FILE or e.get("location") in files)
                and (e["source"] == "computed" or isinstance(e.get("stored"), dict))
            )
            if not ok:
                raise ValueError(f"its entry for {name!r} is malformed or names a file it does not list")
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is missing or not a weight map ({e}); re-export") from None
    return data


def check_files_unchanged(folder: Path, weight_map: Mapping[str, Any]) -> None:
    """Each linked checkpoint file still has the content it had at export (names the file)."""
    for rel, info in weight_map.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise ArtifactError(f"checkpoint file {path} (linked from {info.get('source')}) is missing; re-export")
        if file_sha256(path) != info.get("sha256"):
            raise ArtifactError(
                f"checkpoint file {info.get('source')} changed after export (its sha256 differs from the "
                f"one recorded in {folder / WEIGHT_MAP}); re-export"
            )


def check_weights(
    folder: Path,
    model: Any,
    *,
    recompute: Callable[[str, dict[str, Any]], torch.Tensor | None] | None = None,
    deep: bool = True,
) -> dict[str, int]:
    """Every initializer of ``model`` (an ONNX proto loaded without its external data) against
    ``weights.json``: name, dtype, shape and byte range; checkpoint tensors against the
    safetensors header of the linked file; written tensors by their sha256 (``deep``), and
    with ``recompute`` (name, entry -> tensor or None) against a recomputation from the checkpoint.
    Returns how many initializers were proven which way (``linked``: the checkpoint's header
    places that tensor at that byte range; ``copied``: the same bytes as the checkpoint's tensor;
    ``recomputed``: the same bytes as the recorded transformation of the checkpoint; ``digest
    only``: the recorded digest, where the source cannot be read here); :class:`ArtifactError`
    names the first initializer that differs."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    weight_map = load_weight_map(folder)
    entries: dict[str, Any] = weight_map["initializers"]
    headers: dict[str, dict[str, StoredTensor]] = {}
    counts = {"linked": 0, "copied": 0, "recomputed": 0, "digest only": 0, "embedded": 0}
    names = set()
    for init in model.graph.initializer:
        names.add(init.name)
        dtype = dtype_name(_onnx_to_torch(init.data_type))
        shape = tuple(init.dims)
        if not uses_external_data(init):
            if init.name in entries:
                raise ArtifactError(
                    f"initializer {init.name} is embedded in the graph, {folder / WEIGHT_MAP} says external"
                )
            counts["embedded"] += 1  # a small constant the exporter kept inside the graph
            continue
        entry = entries.get(init.name)
        if entry is None:
            raise ArtifactError(f"initializer {init.name} is not in {folder / WEIGHT_MAP}")
        # onnx types offset and length by their initial None: they are int or None
        info: Any = ExternalDataInfo(init)
        location: str = info.location
        offset: int = info.offset or 0
        length: int | None = info.length
        where = (location, offset, length)
        if entry["dtype"] != dtype or tuple(entry["shape"]) != shape:
            raise ArtifactError(
                f"initializer {init.name}: {dtype} {shape} in the graph, {entry['dtype']} "
                f"{tuple(entry['shape'])} in {WEIGHT_MAP}"
            )
        if (entry["location"], entry["offset"], entry["length"]) != where:
            raise ArtifactError(
                f"initializer {init.name}: the graph reads {where}, {WEIGHT_MAP} says "
                f"{(entry['location'], entry['offset'], entry['length'])}"
            )
        if length is None or length != math.prod(shape) * torch_dtype(dtype).itemsize:
            raise ArtifactError(f"initializer {init.name}: {where[2]} bytes for {dtype} {shape}")
        path = folder / info.location
        if info.location != DATA_FILE:  # a linked checkpoint file: its header must place the tensor here
            if info.location not in headers:
                try:
                    headers[info.location] = read_header(path)
                except CheckpointError as e:
                    raise ArtifactError(str(e)) from None
            key = entry.get("stored", {}).get("key")
            stored = headers[info.location].get(key)
            if stored is None or (stored.dtype, stored.shape, stored.offset, stored.length) != (
                dtype,
                shape,
                *where[1:],
            ):
                raise ArtifactError(
                    f"initializer {init.name} does not read tensor {key} of {path} "
                    f"({'absent' if stored is None else (stored.dtype, stored.shape, stored.offset, stored.length)})"
                )
            counts["linked"] += 1
            continue
        if not deep:
            counts["digest only"] += 1
            continue
        if range_digest(path, offset, length) != entry.get("sha256"):
            raise ArtifactError(f"initializer {init.name}: its bytes in {path} differ from the export's (corrupted)")
        if entry["source"] == "checkpoint":  # a copied checkpoint tensor: the checkpoint's bytes
            src = Path(str(entry["stored"].get("file", "")))
            t = read_header(src).get(str(entry["stored"].get("key"))) if src.is_file() else None
            if t is None:
                counts["digest only"] += 1
                continue
            if range_digest(src, t.offset, t.length) != entry["sha256"]:
                raise ArtifactError(f"initializer {init.name} is not tensor {entry['stored']['key']} of {src}")
            counts["copied"] += 1
            continue
        value = recompute(init.name, entry) if recompute is not None else None
        if value is None:
            counts["digest only"] += 1
            continue
        if hashlib.sha256(tensor_bytes(value)).hexdigest() != entry["sha256"]:
            raise ArtifactError(
                f"initializer {init.name} is not {entry['how']} of the checkpoint (recomputed bytes differ)"
            )
        counts["recomputed"] += 1
    extra = sorted(set(entries) - names)
    if extra:
        raise ArtifactError(f"{folder / WEIGHT_MAP} names initializers the graph lacks: {', '.join(extra[:5])}")
    return counts


def _onnx_to_torch(data_type: int) -> torch.dtype:
    import onnx

    table: dict[int, torch.dtype] = {
        onnx.TensorProto.FLOAT: torch.float32,
        onnx.TensorProto.FLOAT16: torch.float16,
        onnx.TensorProto.BFLOAT16: torch.bfloat16,
        onnx.TensorProto.DOUBLE: torch.float64,
        onnx.TensorProto.INT64: torch.int64,
        onnx.TensorProto.INT32: torch.int32,
        onnx.TensorProto.INT16: torch.int16,
        onnx.TensorProto.INT8: torch.int8,
        onnx.TensorProto.UINT8: torch.uint8,
        onnx.TensorProto.BOOL: torch.bool,
    }
    return table[data_type]
