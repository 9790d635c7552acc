"""Component, trajectory and end-to-end parity of an export folder against its PyTorch reference."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from exporters.manifest import Manifest, load_manifest
from parity.metrics import compare
from parity.points import describe, profile_points
from parity.report import Row
from parity.tolerances import Tolerance, tolerance
from runtimes.backends import Runners, TorchBackend, backend_for, load_reference
from runtimes.sampler import Sampler, check_request, configure_pipeline, request_context, run_pipeline
from zoo.contract import bind_argument
from zoo.errors import ZooError
from zoo.registry import get_family

log = logging.getLogger(__name__)


def scale_of(manifest: Manifest) -> str:
    """``tiny`` rows for random-weight exports, ``full`` for real checkpoints."""
    return "tiny" if manifest.preset else "full"


def _rows_for(level: str, component: str, label: str, shape: str, candidate: Mapping[str, torch.Tensor],
              reference: Mapping[str, torch.Tensor], tol: Tolerance, data_range: float | None = None) -> list[Row]:
    rows = []
    for name, ref in reference.items():
        cand = candidate[name]
        if cand.shape != ref.shape or cand.dtype != ref.dtype:
            failure = f"shape/dtype {tuple(cand.shape)} {cand.dtype} vs reference {tuple(ref.shape)} {ref.dtype}"
            rows.append(Row(level, component, label, shape, name, None, tol, [failure]))
            continue
        m = compare(cand, ref, rtol=tol.rtol, data_range=data_range)
        rows.append(Row(level, component, label, shape, name, m, tol, tol.failures(m)))
    return rows


def component_parity(export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu",
                     components: tuple[str, ...] | None = None, seed: int = 0) -> list[Row]:
    """Each component's backend against the reference module at every profile point."""
    from tqdm.auto import tqdm

    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    ref = load_reference(manifest)
    rows: list[Row] = []
    names = components or tuple(manifest.components)
    for name in names:
        record = manifest.component(name)
        component = family.component(name)
        tol = tolerance(record.kind, record.precision, scale_of(manifest))
        data_range = 2.0 if record.kind == "vae_decoder" else None  # images in [-1, 1]
        points = profile_points(record.dims)
        with TorchBackend(manifest, name, device) as reference, backend_for(backend, manifest, name, device) as candidate:
            for label, point in tqdm(points, desc=f"parity {name}", unit="shape", leave=False):
                feeds = component.sample_inputs(ref, point, seed=seed)
                expected = reference(feeds)
                got = candidate(feeds)
                rows += _rows_for("component", name, label, describe(point, record.dims), got, expected, tol, data_range)
    return rows


def loop_parity(export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu", seed: int = 0) -> list[Row]:
    """Host loops over components (a chunked VAE's encode / decode) against the library call
    they replace, at the family's own list of lengths."""
    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    ref = load_reference(manifest)
    runners = Runners(backend, manifest, device)
    rows: list[Row] = []
    try:
        for check in family.loop_checks(ref, runners, manifest.envelope, seed):
            record = manifest.component(check.component)
            tol = tolerance(record.kind, record.precision, scale_of(manifest))
            data_range = 2.0 if record.kind == "vae_decoder" else None
            shape = "x".join(map(str, check.reference.shape))
            rows += _rows_for("loop", check.component, check.label, shape, {check.output: check.candidate},
                              {check.output: check.reference}, tol, data_range)
    finally:
        runners.close()
    return rows


def end_to_end_parity(export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu",
                      seed: int = 0) -> list[Row]:
    """The sampler against the family's pipeline on the reference modules, for each of the
    family's parity requests: the denoiser's latents at every step, then the decoded frames."""
    manifest = load_manifest(export_dir)
    family = get_family(manifest.family)
    if not family.has_sampler:
        return []
    needed = {c for slot in family.pipeline_slots for c in slot.components}
    if not needed <= set(manifest.components):
        log.warning("end-to-end parity skipped: the export lacks %s", ", ".join(sorted(needed - set(manifest.components))))
        return []
    scale = scale_of(manifest)
    component, feed = family.trajectory
    rows: list[Row] = []
    with Sampler(export_dir, backend=backend, device=device) as sampler:
        for label, request in family.parity_requests(request_context(manifest)):
            check_request(manifest, request)
            if family.reference_backend:  # the family's own loop, on the reference backend
                with Sampler(export_dir, backend=family.reference_backend) as reference:
                    reference_steps = reference.record_inputs(component, feed)
                    expected = reference(request, seed, progress=False)
            else:
                expected, reference_steps = _library_run(manifest, family, request, component, feed, seed)
            sampler.runners = dict(sampler.backends)
            candidate_steps = sampler.record_inputs(component, feed)
            got = sampler(request, seed, progress=False)
            rows += _request_rows(label, component, feed, candidate_steps, reference_steps, got, expected, scale)
    return rows


def _library_run(manifest: Manifest, family, request, component: str, feed: str, seed: int):
    """The family's pipeline on the library modules, the denoiser's latents recorded by a hook."""
    ref = load_reference(manifest)
    module = ref.module(family.component(component).module)
    pipeline = configure_pipeline(family.build_pipeline(request, dict(ref.modules)), request, progress=False)
    steps: list[torch.Tensor] = []

    def hook(mod: torch.nn.Module, args: tuple, kw: dict) -> None:
        steps.append(bind_argument(mod.forward, feed, args, kw).detach().clone())

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            expected = run_pipeline(family, pipeline, request, seed)
    finally:
        handle.remove()
    return expected, steps


def _request_rows(label: str, component: str, feed: str, candidate_steps: list[torch.Tensor],
                  reference_steps: list[torch.Tensor], got: np.ndarray, expected: np.ndarray, scale: str) -> list[Row]:
    rows: list[Row] = []
    tol = tolerance("trajectory", "float32", scale)
    if len(candidate_steps) != len(reference_steps):
        rows.append(Row("trajectory", component, f"{label} steps", "-", feed, None, tol,
                        [f"{len(candidate_steps)} denoiser calls vs {len(reference_steps)} in the pipeline"]))
    for i, (c, r) in enumerate(zip(candidate_steps, reference_steps)):
        rows += _rows_for("trajectory", component, f"{label} step {i}", "x".join(map(str, r.shape)), {feed: c}, {feed: r}, tol)
    tol = tolerance("end_to_end", "float32", scale)
    shape = "x".join(map(str, expected.shape))
    # frames compared in [-1, 1], as the pipeline's decoder produced them
    rows += _rows_for("end_to_end", "sampler", label, shape,
                      {"frames": torch.from_numpy(got).double() * 2 - 1},
                      {"frames": torch.from_numpy(expected).double() * 2 - 1}, tol, data_range=2.0)
    return rows


def run_parity(export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu",
               end_to_end: bool = True) -> list[Row]:
    """All levels: components at every profile point, then trajectory and end to end."""
    if backend == "torch":
        raise ZooError("parity compares a backend against the torch reference: choose --backend onnxruntime or tensorrt")
    rows = component_parity(export_dir, backend, device)
    rows += loop_parity(export_dir, backend, device)
    if end_to_end:
        rows += end_to_end_parity(export_dir, backend, device)
    return rows
