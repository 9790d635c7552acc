"""``manifest.json``: what an export folder holds, and the contract its backends validate against."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.contract import Axis, Dim, Range
from zoo.errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TensorRecord:
    name: str
    dtype: str
    shape: tuple[int | str, ...]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorRecord:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))

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
            "precision": self.precision,
            "opset": self.opset,
        }

    @classmethod
    def from_json(cls, name: str, d: dict[str, Any]) -> ComponentRecord:
        return cls(
            name=name,
            kind=d["kind"],
            module=d["module"],
            file=d["file"],
            size=int(d["size"]),
            sha256=d["sha256"],
            external_data={k: int(v) for k, v in d.get("external_data", {}).items()},
            inputs=tuple(TensorRecord.from_json(t) for t in d["inputs"]),
            outputs=tuple(TensorRecord.from_json(t) for t in d["outputs"]),
            dims={k: Dim.from_json(k, v) for k, v in d["dims"].items()},
            precision=d.get("precision", "float32"),
            opset=int(d.get("opset", 0)),
        )

    def point(self, which: str = "opt") -> dict[str, int]:
        return {k: getattr(d, which) for k, d in self.dims.items()}


@dataclass
class Manifest:
    family: str
    variant: str
    source: dict[str, Any]  # path (relative to the export folder when inside it), hash, preset
    versions: dict[str, str]
    envelope: dict[str, Range]
    axes: dict[str, Axis]  # the envelope's constraints (multiple_of, unit), to check requests
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
            "source": self.source,
            "versions": self.versions,
            "envelope": {
                k: {"min": r.min, "opt": r.opt, "max": r.max, "multiple_of": self.axes[k].multiple_of,
                    "unit": self.axes[k].unit}
                for k, r in self.envelope.items()
            },
            "pipeline": self.pipeline,
            "host_modules": self.host_modules,
            "components": {k: c.to_json() for k, c in self.components.items()},
            "configs": self.configs,
        }

    @property
    def source_path(self) -> Path:
        p = Path(self.source["path"])
        return p if p.is_absolute() else self.root / p

    def component(self, name: str) -> ComponentRecord:
        if name not in self.components:
            raise ArtifactError(
                f"export {self.root} has no component {name!r}; it has {', '.join(self.components)}"
            )
        return self.components[name]


def load_manifest(export_dir: str | Path) -> Manifest:
    """Read ``export_dir/manifest.json``; :class:`ArtifactError` if missing, corrupt or too new."""
    root = Path(export_dir)
    if not root.is_dir():
        raise ArtifactError(f"export folder {root} does not exist; create it with `zoo export`")
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} has no {MANIFEST}: not a zoo export folder (create one with `zoo export`)")
    try:
        d = json.loads(path.read_text())
        if d.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path} has format version {d.get('format_version')}, this zoo reads {FORMAT_VERSION}: re-export"
            )
        return Manifest(
            family=d["family"],
            variant=d["variant"],
            source=d["source"],
            versions=d["versions"],
            envelope={k: Range(v["min"], v["opt"], v["max"]) for k, v in d["envelope"].items()},
            axes={
                k: Axis(k, Range(v["min"], v["opt"], v["max"]), multiple_of=v.get("multiple_of", 1), unit=v.get("unit", ""))
                for k, v in d["envelope"].items()
            },
            components={k: ComponentRecord.from_json(k, v) for k, v in d["components"].items()},
            pipeline=d.get("pipeline"),
            configs=d.get("configs", {}),
            host_modules=d.get("host_modules", {}),
            root=root,
        )
    except ArtifactError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{path} is corrupt ({type(e).__name__}: {e}); re-export") from None
