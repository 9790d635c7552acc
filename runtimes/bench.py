"""Latency of each component: the torch reference and a backend, side by side at the opt shape."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from exporters.manifest import Manifest, load_manifest
from runtimes.backends import Backend, backend_for, load_reference, parse_device, reference_backend
from zoo.errors import InputError
from zoo.registry import get_family


@dataclass
class BenchRow:
    component: str
    shape: str
    backend: str
    torch_ms: float
    backend_ms: float
    speedup: float  # torch_ms / backend_ms: > 1 means the backend is faster
    iterations: int
    threads: int
    # with --against OTHER: the same component of another export (the fp32 export of a quantized
    # one) on the same backend and feeds, and the graphs' sizes on disk (bytes)
    against_ms: float | None = None
    size: int | None = None
    against_size: int | None = None

    @property
    def against_speedup(self) -> float | None:
        """against_ms / backend_ms: > 1 means this export is faster than the other."""
        return None if self.against_ms is None else self.against_ms / self.backend_ms

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _median_ms(backend: Backend, feeds: dict[str, torch.Tensor], warmup: int, iterations: int) -> float:
    from runtimes.feeds import validate_feeds

    backend(feeds)  # validated and run once; the timed loop measures the runtime alone
    checked = validate_feeds(backend.record, feeds)
    for _ in range(warmup):
        backend.infer(checked)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.infer(checked)
        if backend.device.type == "cuda":
            torch.cuda.synchronize(backend.device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def bench(
    export_dir: str | Path,
    backend: str = "onnxruntime",
    device: str = "cpu",
    warmup: int = 2,
    iterations: int = 10,
    components: tuple[str, ...] | None = None,
    against: str | Path | None = None,
) -> list[BenchRow]:
    """Median latency of torch eager and ``backend`` per component, measured in one run, alternating
    component by component so both see the same machine state. (An imported graph's reference, in
    the torch column, is the given graph on ONNX Runtime CPU.) ``against``: another export of the
    same family (the fp32 export of a quantized one), whose same component is timed on the same
    backend and feeds beside it, and both graphs' sizes recorded."""
    from tqdm.auto import tqdm

    parse_device(device, backend)  # a backend that cannot run here says so before any reference loads
    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    other = load_manifest(against) if against is not None else None
    if other is not None:
        _check_comparable(manifest, other, components or tuple(manifest.components))
    ref = load_reference(manifest)
    rows = []
    for name in tqdm(components or tuple(manifest.components), desc="bench", unit="component"):
        record = manifest.component(name)
        with (
            reference_backend(manifest, name, device) as reference,
            backend_for(backend, manifest, name, device) as candidate,
        ):
            # the opt point of what the backend runs (an engine may be built for a narrower profile)
            point = {k: d.opt for k, d in candidate.profile_dims.items()}
            feeds = family.component(name).sample_inputs(ref, point)
            torch_ms = _median_ms(reference, feeds, warmup, iterations)
            backend_ms = _median_ms(candidate, feeds, warmup, iterations)
        against_ms = against_size = None
        if other is not None:
            with backend_for(backend, other, name, device) as theirs:
                against_ms = _median_ms(theirs, feeds, warmup, iterations)
            against_size = other.component(name).size_on_disk
        shape = " ".join(f"{k}={v}" for k, v in point.items() if record.dims[k].min != record.dims[k].max)
        rows.append(
            BenchRow(
                name,
                shape,
                backend,
                torch_ms,
                backend_ms,
                torch_ms / backend_ms,
                iterations,
                torch.get_num_threads(),
                against_ms,
                record.size_on_disk,
                against_size,
            )
        )
    return rows


def _check_comparable(manifest: Manifest, other: Manifest, components: tuple[str, ...]) -> None:
    """``--against``: an export of the same family with the same components' inputs and outputs."""
    if other.family != manifest.family:
        raise InputError(
            f"--against {other.root}: an export of {other.family}, not of {manifest.family}: compare exports of one family"
        )
    for name in components:
        if name not in other.components:
            raise InputError(
                f"--against {other.root}: it has no component {name!r} (it has {', '.join(other.components)})"
            )
        mine, theirs = manifest.component(name), other.component(name)
        if [t.name for t in mine.inputs] != [t.name for t in theirs.inputs]:
            raise InputError(f"--against {other.root}: component {name!r} takes other inputs")
