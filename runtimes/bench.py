"""Latency of each component: the torch reference and a backend, side by side at the opt shape."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from exporters.manifest import load_manifest
from runtimes.backends import Backend, backend_for, load_reference, parse_device, reference_backend
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
) -> list[BenchRow]:
    """Median latency of torch eager and ``backend`` per component, measured in one run, alternating
    component by component so both see the same machine state. (An imported graph's reference, in
    the torch column, is the given graph on ONNX Runtime CPU.)"""
    from tqdm.auto import tqdm

    parse_device(device, backend)  # a backend that cannot run here says so before any reference loads
    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
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
        shape = " ".join(f"{k}={v}" for k, v in point.items() if record.dims[k].min != record.dims[k].max)
        rows.append(
            BenchRow(
                name, shape, backend, torch_ms, backend_ms, torch_ms / backend_ms, iterations, torch.get_num_threads()
            )
        )
    return rows
