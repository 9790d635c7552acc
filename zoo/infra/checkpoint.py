"""Checks on local checkpoint folders, and their content hash, before any library loads them."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zoo.errors import CheckpointError
from zoo.infra.hashing import file_sha256

if TYPE_CHECKING:
    from zoo.contract import Source

LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".data")
RANDOM_MARKER = "zoo_random.json"  # written by Family.build_random: preset and seed


def is_lfs_pointer(path: Path) -> bool:
    """True for a git-LFS pointer file (a few hundred bytes of text) standing where weights should be."""
    try:
        with open(path, "rb") as f:
            return f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX
    except OSError:
        return False


def require_folder(path: str | Path, *, family: str, index_file: str, accepted: Iterable[str]) -> dict[str, Any]:
    """Check that ``path`` is a checkpoint folder of one of the ``accepted`` classes.

    Returns the parsed ``index_file`` (``model_index.json`` or ``config.json``). Raises
    :class:`CheckpointError` naming the folder and what was expected: missing, not a folder,
    empty, no index file, another model's folder, or weights that are LFS pointers / empty.
    """
    path = Path(path)
    accepted = tuple(accepted)
    expected = f"a diffusers-format folder of {' or '.join(accepted)} for family {family!r}"
    if not path.exists():
        raise CheckpointError(f"checkpoint folder {path} does not exist; expected {expected}")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} is not a folder; expected {expected}")
    if not any(path.iterdir()):
        raise CheckpointError(f"checkpoint folder {path} is empty; expected {expected}")
    index = path / index_file
    if not index.is_file():
        raise CheckpointError(f"checkpoint folder {path} has no {index_file}; expected {expected}")
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{index} is not valid JSON ({e}); expected {expected}") from None
    cls = data.get("_class_name") if isinstance(data, dict) else None
    if cls not in accepted:
        what = f"a {cls} checkpoint" if cls else "no _class_name"
        raise CheckpointError(f"checkpoint folder {path} holds {what}; expected {expected}")
    for weights in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        if weights.stat().st_size == 0:
            raise CheckpointError(f"weights file {weights} is empty")
        if is_lfs_pointer(weights):
            raise CheckpointError(
                f"weights file {weights} is a git-LFS pointer, not the weights; run `git lfs pull` in {path}"
            )
    return data


@contextlib.contextmanager
def loading(what: str, source: Path) -> Iterator[None]:
    """Library loading errors (truncated weights, missing files, bad configs) as CheckpointError."""
    try:
        yield
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not load {what} from {source}: {first}") from None


def file_hashes(path: str | Path) -> dict[str, str]:
    """The sha256 of each file of a folder (or of the one file), by relative path: what
    ``sha256sum`` prints, computed once per version of a file (:func:`zoo.infra.hashing.file_sha256`)."""
    path = Path(path)
    if path.is_file():
        return {path.name: file_sha256(path)}
    return {p.relative_to(path).as_posix(): file_sha256(p) for p in sorted(path.rglob("*")) if p.is_file()}


def changed_files(path: str | Path, recorded: dict[str, str]) -> list[str]:
    """The files of ``path`` whose hash differs from ``recorded`` (added and missing ones too)."""
    now = file_hashes(path)
    return sorted(k for k in set(now) | set(recorded) if now.get(k) != recorded.get(k))


def content_hash(path: str | Path) -> str:
    """A sha256 over a file, or a folder's files: each one's relative name, size and the sha256
    of all its bytes (:func:`zoo.infra.hashing.file_sha256`, remembered by file identity, so a 30 GB
    checkpoint is read once). A random-weight marker's seed is part of its contents, so another
    seed is another hash."""
    return content_hash_of(path, file_hashes(path))


def content_hash_of(path: str | Path, hashes: Mapping[str, str]) -> str:
    """:func:`content_hash` of ``path`` from its :func:`file_hashes` ``hashes``, without reading
    the files again (only their sizes are looked up): the two give the same value."""
    path = Path(path)
    h = hashlib.sha256()
    for rel in sorted(hashes, key=lambda r: r.split("/")):  # the order of sorted Paths: part by part
        f = path if path.is_file() else path / rel
        h.update(f"{rel}\0{f.stat().st_size}\0{hashes[rel]}\n".encode())
    return h.hexdigest()


def random_preset(path: Path) -> str | None:
    """The preset of a folder written by ``build_random`` (``tiny``, ``bench``), else None."""
    marker = Path(path) / RANDOM_MARKER
    if not marker.is_file():
        return None
    return json.loads(marker.read_text()).get("preset")


def write_random_marker(path: Path, *, family: str, variant: str, preset: str, seed: int) -> None:
    (Path(path) / RANDOM_MARKER).write_text(
        json.dumps({"family": family, "variant": variant, "preset": preset, "seed": seed}, indent=2) + "\n"
    )


Found = tuple[Callable[[], Any], Callable[[], Any] | None, Callable[[], Any] | None]


def pipeline_modules(
    source: Path, index: dict[str, Any], *, dtype: Any = None, skip: Iterable[str] = ()
) -> dict[str, Found]:
    """Loaders for every module a diffusers ``model_index.json`` names, each with the real
    ``from_pretrained`` of its class on its subfolder, a config loader that builds the module
    on the meta device (its full config, defaults included, without reading any weights), and
    for torch modules a weightless build (:class:`zoo.contract.WeightlessModule`)."""
    import importlib

    import torch

    dtype = dtype or torch.float32
    out: dict[str, tuple[Callable[[], Any], Callable[[], Any] | None]] = {}
    for name, entry in index.items():
        if name.startswith("_") or name in skip or not isinstance(entry, list) or len(entry) != 2 or None in entry:
            continue
        library, class_name = entry
        if library not in ("diffusers", "transformers"):
            raise CheckpointError(
                f"{source / 'model_index.json'}: module {name} is of library {library!r}; "
                f"expected diffusers or transformers"
            )
        cls = getattr(importlib.import_module(library), class_name, None)
        if cls is None:
            raise CheckpointError(
                f"{source / 'model_index.json'}: {library} has no class {class_name!r} (module {name})"
            )
        out[name] = (
            _module_loader(cls, source, name, dtype),
            _config_loader(cls, source, name),
            _weightless_loader(cls, source, name),
        )
    return out


def empty_module(cls: Any, config: Any) -> Any:
    """``cls`` built from ``config`` with its parameters on the meta device and its buffers
    computed (RoPE tables, position ids): what a weightless export traces."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        if hasattr(cls, "load_config"):  # diffusers
            return cls.from_config(config)
        module = cls._from_config(config)
    module.tie_weights()  # tied embeddings share one tensor, as after from_pretrained
    return module


def _weightless_loader(cls: Any, source: Path, name: str) -> Callable[[], Any] | None:
    import torch

    from zoo.contract import WeightlessModule

    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return None

    def build() -> Any:
        return empty_module(cls, _stored_config(cls, source, name))

    rename = None if hasattr(cls, "load_config") else transformers_key_map
    return lambda: WeightlessModule(build, (source / name,), rename=rename)


def transformers_key_map(module: Any, stored: list[str]) -> dict[str, str]:
    """{module key: stored key} as transformers' ``from_pretrained`` renames checkpoint keys
    (its conversion mapping: prefix changes, renamings, the base-model prefix). A key that a
    weight converter would change (split, merge) is left out: it is not stored as the module
    holds it."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, dot_natural_key, rename_source_key

    mapping = get_model_conversion_mapping(module)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta = module.state_dict()
    prefix = module.base_model_prefix
    out: dict[str, str] = {}
    for key in sorted(stored, key=dot_natural_key):
        renamed, pattern = rename_source_key(key, renamings, converters, prefix, meta)
        if renamed not in meta and key in meta:
            renamed, pattern = rename_source_key(key, [], [], base_model_prefix=prefix, meta_state_dict=meta)
        if pattern is None and renamed in meta:
            out.setdefault(renamed, key)
    return out


def _module_loader(cls: Any, source: Path, name: str, dtype: Any) -> Callable[[], Any]:
    import torch

    def load() -> Any:
        with loading(f"{cls.__name__} ({name})", source):
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
                return cls.from_pretrained(str(source), subfolder=name, dtype=dtype)
            return cls.from_pretrained(str(source / name))  # tokenizers, schedulers, processors

    return load


def _config_loader(cls: Any, source: Path, name: str) -> Callable[[], Any] | None:
    import torch

    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        return None

    def config() -> Any:
        stored = _stored_config(cls, source, name)
        if not hasattr(cls, "load_config"):
            return stored
        with loading(f"the {name} config", source), torch.device("meta"):
            return cls.from_config(stored).config  # diffusers: every default, from a module built without memory

    return config


def _stored_config(cls: Any, source: Path, name: str) -> Any:
    """The module's config as its folder stores it (a dict for diffusers, a config object for transformers)."""
    with loading(f"the {name} config", source):
        if hasattr(cls, "load_config"):
            return cls.load_config(str(source), subfolder=name)
        return cls.config_class.from_pretrained(str(source / name))


def graph_files(
    sources: Sequence[Source], files: Mapping[str, str | Path], *, family: str, folder_is: str
) -> dict[str, Path]:
    """The ONNX files of a family of imported graphs, by source role: a role given as its own
    source (``--detector FILE``) wins, the others are ``files[role]`` (a path relative to
    ``--model DIR``). ``folder_is`` says what ``--model`` should be, for the messages. Every file
    is checked to exist, be non-empty and not a git-LFS pointer: a :class:`CheckpointError`
    naming the option and the file otherwise."""
    given = {s.role: Path(s.path) for s in sources if s.role != "model"}
    folder = next((Path(s.path) for s in sources if s.role == "model"), None)
    flags = {role: "--" + role.replace("_", "-") for role in files}
    if folder is not None and not folder.is_dir():
        raise CheckpointError(
            f"checkpoint folder {folder} {'is not a folder' if folder.exists() else 'does not exist'}; "
            f"expected {folder_is}"
        )
    found: dict[str, Path] = {}
    for role, relative in files.items():
        if role in given:
            found[role] = given[role]
        elif folder is not None:
            found[role] = folder / relative
        else:
            raise CheckpointError(
                f"family {family!r} needs the {role.replace('_', ' ')} graph: give {flags[role]} FILE "
                f"({Path(relative).name}), or --model DIR, {folder_is}"
            )
    missing = [str(files[r]) for r, p in found.items() if r not in given and not p.is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint folder {folder} has no {' and no '.join(missing)}; expected {folder_is} (or give the "
            f"files with {', '.join(flags.values())})"
        )
    for role, path in found.items():
        if not path.is_file():
            raise CheckpointError(
                f"{flags[role]} {path}: {'not a file' if path.exists() else 'no such file'}; expected an ONNX graph"
            )
        if path.stat().st_size == 0 or is_lfs_pointer(path):
            what = "empty" if path.stat().st_size == 0 else "a git-LFS pointer, not a model (run `git lfs pull`)"
            raise CheckpointError(f"{flags[role]} {path} is {what}")
    return {role: path.resolve() for role, path in found.items()}
