"""``manifest.json``: what an export folder holds, and the contract its backends validate against.

A manifest is read from disk that anyone may have edited: its shape is checked field by field
(a wrong type is an :class:`ArtifactError` naming the field, never an internal error), and every
file it names must stay inside the export folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from exporters.artifacts import read_json
from zoo.contract import DTYPES, Axis, Dim, Range, Source, check_dims
from zoo.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 3  # 3: sources' hashes over all bytes of every file (2 sampled files over 64 MB)


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ComponentRecord:
    """One exported component: its files and its validated IO contract."""

    name: str
    kind: str
    module: str
    file: str  # relative to the export folder
    size: int
    sha256: str
    external_data: dict[str, int]  # relative file -> size
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    dims: dict[str, Dim]
    precision: str
    opset: int
    state: dict[str, str] = field(default_factory=dict)  # output -> the input it feeds on the next call
    weight_map: str | None = None  # weightless exports: weights.json, the source of every initializer
    # an imported graph (given as a file, not traced): its source role, file name and sha256, what its
    # reference is, and the batch decision; None for a traced component (and in manifests written before)
    imported: dict[str, Any] | None = None
    # a quantized graph (zoo export --quantize): format, method, scales file, the layers kept in high
    # precision and the calibration; None for a graph in its plain precision
    quantization: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "module": self.module,
            "file": self.file,
            "size": self.size,
            "sha256": self.sha256,
            "external_data": self.external_data,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "dims": {k: d.to_json() for k, d in self.dims.items()},
            "state": self.state,
            "precision": self.precision,
            "opset": self.opset,
            **({"weight_map": self.weight_map} if self.weight_map else {}),
            **({"imported": self.imported} if self.imported is not None else {}),
            **({"quantization": self.quantization} if self.quantization is not None else {}),
        }

    @property
    def size_on_disk(self) -> int:
        """The graph and its external data, in bytes."""
        return self.size + sum(self.external_data.values())

    @property
    def linked_bytes(self) -> int:
        """External data that is a hard link to a checkpoint file (a weightless export's)."""
        from exporters.weights import WEIGHTS_DIR

        folder = PurePosixPath(self.file).parent / WEIGHTS_DIR
        return sum(v for k, v in self.external_data.items() if PurePosixPath(k).parent == folder)

    def point(self, which: str = "opt") -> dict[str, int]:
        return {k: getattr(d, which) for k, d in self.dims.items()}


@dataclass
class Manifest:
    family: str
    variant: str
    sources: list[dict[str, Any]]  # role, path (relative to the export folder when inside it), hash, scale, preset
    versions: dict[str, str]
    envelope: dict[str, Range]
    axes: dict[str, Axis]  # the envelope's constraints (multiple_of, unit, ceiling), to check requests
    components: dict[str, ComponentRecord]
    pipeline: str | None = None
    configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # module -> library config
    host_modules: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> library, class
    root: Path = Path(".")

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "variant": self.variant,
            "sources": self.sources,
            "versions": self.versions,
            "envelope": {
                k: {
                    "min": r.min,
                    "opt": r.opt,
                    "max": r.max,
                    "multiple_of": self.axes[k].multiple_of,
                    "remainder": self.axes[k].remainder,
                    "floor": self.axes[k].floor,
                    "ceiling": self.axes[k].ceiling,
                    "unit": self.axes[k].unit,
                }
                for k, r in self.envelope.items()
            },
            "pipeline": self.pipeline,
            "host_modules": self.host_modules,
            "components": {k: c.to_json() for k, c in self.components.items()},
            "configs": self.configs,
        }

    def source_paths(self) -> list[Source]:
        """The sources as the family's loader takes them, paths resolved against the export folder."""
        out = []
        for s in self.sources:
            p = Path(s["path"])
            out.append(Source(s["role"], p if p.is_absolute() else self.root / p, s.get("scale")))
        return out

    @property
    def preset(self) -> str | None:
        """``tiny`` / ``bench`` for a random-weight reference, None for a real checkpoint."""
        return self.sources[0].get("preset") if self.sources else None

    def component(self, name: str) -> ComponentRecord:
        if name not in self.components:
            raise ArtifactError(f"export {self.root} has no component {name!r}; it has {', '.join(self.components)}")
        return self.components[name]


# --------------------------------------------------------------------------------------
# Reading, with the shape of every field checked
# --------------------------------------------------------------------------------------


class _Shape(Exception):
    """A field of the wrong shape (turned into one ArtifactError naming the field)."""


def _get(d: Any, key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
    if not isinstance(d, dict):
        raise _Shape(f"{where} is {type(d).__name__}, expected an object")
    if key not in d:
        if default is not ...:
            return default
        raise _Shape(f"{where}.{key} is missing")
    value = d[key]
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise _Shape(f"{where}.{key} is {value!r}, expected an integer")
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _Shape(f"{where}.{key} is {type(value).__name__} {value!r:.40}, expected {names}")
    return value


def inside(root: Path, rel: str, what: str) -> Path:
    """``root / rel`` if ``rel`` is a relative path that stays inside ``root``; refused otherwise."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel:
        raise ArtifactError(f"{root / MANIFEST}: {what} {rel!r} is not a path inside the export folder; refused")
    full = root / p
    try:
        full.resolve().relative_to(root.resolve())
    except ValueError:
        raise ArtifactError(
            f"{root / MANIFEST}: {what} {rel!r} leads outside the export folder (a link); refused"
        ) from None
    return full


def _tensor(d: Any, where: str, dims: dict[str, Dim]) -> TensorRecord:
    name = _get(d, "name", str, where)
    dtype = _get(d, "dtype", str, where)
    if dtype not in DTYPES:
        raise _Shape(f"{where}.dtype is {dtype!r}, expected one of {', '.join(DTYPES)}")
    shape = _get(d, "shape", list, where)
    for i, s in enumerate(shape):
        if isinstance(s, bool) or not isinstance(s, (int, str)) or (isinstance(s, int) and s < 0):
            raise _Shape(f"{where}.shape[{i}] is {s!r}, expected a size or a dim name")
        if isinstance(s, str) and s not in dims:
            raise _Shape(f"{where}.shape[{i}] names dim {s!r}, which the component does not declare")
    return TensorRecord(name, dtype, tuple(shape))


def _component(root: Path, name: str, d: Any) -> ComponentRecord:
    where = f"components.{name}"
    dims = {}
    for k, v in _get(d, "dims", dict, where).items():
        try:
            dim = Dim.from_json(k, v)
        except (KeyError, TypeError, AttributeError) as e:
            raise _Shape(f"{where}.dims.{k} is malformed ({e})") from None
        if not 0 <= dim.min <= dim.opt <= dim.max or dim.multiple_of < 1 or dim.scale < 1:
            raise _Shape(f"{where}.dims.{k} is not a valid profile: {v}")
        dims[k] = dim
    try:
        check_dims(dims)
    except ValueError as e:
        raise _Shape(f"{where}: {e}") from None
    file = _get(d, "file", str, where)
    inside(root, file, f"{where}.file")
    external = _get(d, "external_data", dict, where, {})
    for rel, size in external.items():
        inside(root, rel, f"{where}.external_data")
        if isinstance(size, bool) or not isinstance(size, int):
            raise _Shape(f"{where}.external_data[{rel!r}] is {size!r}, expected a size in bytes")
    inputs = tuple(_tensor(t, f"{where}.inputs[{i}]", dims) for i, t in enumerate(_get(d, "inputs", list, where)))
    outputs = tuple(_tensor(t, f"{where}.outputs[{i}]", dims) for i, t in enumerate(_get(d, "outputs", list, where)))
    state = _get(d, "state", dict, where, {})
    weight_map = _get(d, "weight_map", (str, type(None)), where, None)
    imported = _get(d, "imported", (dict, type(None)), where, None)
    if imported is not None:
        _get(imported, "source", str, f"{where}.imported")
    if weight_map is not None:
        inside(root, weight_map, f"{where}.weight_map")
    quantization = _get(d, "quantization", (dict, type(None)), where, None)
    if quantization is not None:
        _get(quantization, "format", str, f"{where}.quantization")
        inside(root, _get(quantization, "scales", str, f"{where}.quantization"), f"{where}.quantization.scales")
    ins, outs = {t.name for t in inputs}, {t.name for t in outputs}
    for o, i in state.items():
        if o not in outs or i not in ins:
            raise _Shape(f"{where}.state pairs output {o!r} with input {i!r}, and the component lacks one of them")
    return ComponentRecord(
        name=name,
        kind=_get(d, "kind", str, where),
        module=_get(d, "module", str, where),
        file=file,
        size=_get(d, "size", int, where),
        sha256=_get(d, "sha256", str, where),
        external_data=dict(external),
        inputs=inputs,
        outputs=outputs,
        dims=dims,
        precision=_get(d, "precision", str, where, "float32"),
        opset=_get(d, "opset", int, where, 0),
        state=dict(state),
        weight_map=weight_map,
        imported=imported,
        quantization=quantization,
    )


def _envelope(d: dict[str, Any]) -> tuple[dict[str, Range], dict[str, Axis]]:
    envelope, axes = {}, {}
    for k, v in _get(d, "envelope", dict, "manifest").items():
        where = f"envelope.{k}"
        r = Range(_get(v, "min", int, where), _get(v, "opt", int, where), _get(v, "max", int, where))
        ceiling = _get(v, "ceiling", (int, type(None)), where, None)
        envelope[k] = r
        axes[k] = Axis(
            k,
            r,
            multiple_of=_get(v, "multiple_of", int, where, 1),
            floor=_get(v, "floor", int, where, 1),
            ceiling=ceiling,
            unit=_get(v, "unit", str, where, ""),
            remainder=_get(v, "remainder", int, where, 0),
        )
    return envelope, axes


def _sources(root: Path, d: dict[str, Any]) -> list[dict[str, Any]]:
    sources: list[dict[str, Any]] = _get(d, "sources", list, "manifest")
    if not sources:
        raise _Shape("sources is empty, expected at least the model")
    for i, s in enumerate(sources):
        where = f"sources[{i}]"
        _get(s, "role", str, where)
        path = _get(s, "path", str, where)
        _get(s, "hash", str, where)
        files = _get(s, "files", dict, where, {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise _Shape(f"{where}.files is not a map of file names to hashes")
        scale = _get(s, "scale", (int, float, type(None)), where, None)
        if scale is not None and (isinstance(scale, bool) or not math.isfinite(scale)):
            raise _Shape(f"{where}.scale is {scale!r}, expected a finite number")
        if not Path(path).is_absolute():
            inside(root, path, f"{where}.path")
    return sources


def load_manifest(export_dir: str | Path) -> Manifest:
    """Read ``export_dir/manifest.json``; :class:`ArtifactError` if missing, corrupt, of the wrong
    shape, too old or too new, or naming files outside the folder."""
    root = Path(export_dir)
    if not root.is_dir():
        raise ArtifactError(f"export folder {root} does not exist; create it with `zoo export`")
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}: not a zoo export folder (create one with `zoo export`)")
    d = read_json(path, "; re-export")
    try:
        version = _get(d, "format_version", int, "manifest")
        if version != FORMAT_VERSION:
            why = " (its sources' hashes read only a sample of large files)" if version < 3 else ""
            raise ArtifactError(f"{path} has format version {version}{why}, this zoo reads {FORMAT_VERSION}: re-export")
        envelope, axes = _envelope(d)
        components = {k: _component(root, k, v) for k, v in _get(d, "components", dict, "manifest").items()}
        return Manifest(
            family=_get(d, "family", str, "manifest"),
            variant=_get(d, "variant", str, "manifest"),
            sources=_sources(root, d),
            versions=_get(d, "versions", dict, "manifest", {}),
            envelope=envelope,
            axes=axes,
            components=components,
            pipeline=_get(d, "pipeline", (str, type(None)), "manifest", None),
            configs=_get(d, "configs", dict, "manifest", {}),
            host_modules=_get(d, "host_modules", dict, "manifest", {}),
            root=root,
        )
    except _Shape as e:
        raise ArtifactError(f"{path} is malformed: {e}; re-export") from None


def looks_like_export(folder: Path) -> bool:
    """True for a folder a zoo export wrote (its manifest may be corrupt): it may be replaced."""
    from exporters.artifacts import EXPORT_MARKER

    return (folder / EXPORT_MARKER).is_file()
