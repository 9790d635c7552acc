"""The sampler gives the diffusers pipeline's images, through ONNX Runtime and through torch."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from exporters.manifest import load_manifest
from parity.metrics import compare
from parity.tolerances import tolerance
from runtimes.sampler import Sampler, prepare_request
from zoo.errors import EnvelopeError, InputError, OutputError, ZooError

E2E = tolerance("end_to_end", "float32", "tiny")


def _diffusers(export_dir, seed, **kwargs):
    manifest = load_manifest(export_dir)
    pipe = getattr(diffusers, manifest.pipeline).from_pretrained(manifest.source_paths()[0].path)
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs).images


def _request(out, **options):
    return prepare_request(load_manifest(out), {"negative_prompt": "", "steps": 3, "guidance_scale": 4.5, **options})


@pytest.mark.parametrize(
    "variant, options",
    [
        ("sigma", dict(height=64, width=64, guidance_scale=4.5, max_sequence_length=300)),
        ("alpha-1024", dict(height=96, width=32, guidance_scale=3.0, max_sequence_length=120, batch=2)),
        ("alpha-512", dict(height=48, width=80, guidance_scale=1.0, max_sequence_length=120)),
    ],
)
def test_onnxruntime_sampler_matches_diffusers(tiny_export, variant, options):
    out = tiny_export("pixart", variant)
    request = _request(out, prompt="a cat on a red sofa", negative_prompt="blurry", **options)
    expected = _diffusers(out, 7, **request.kwargs)
    with Sampler(out, backend="onnxruntime") as sampler:
        got = sampler(request, 7, progress=False)
    assert got.shape == expected.shape == (options.get("batch", 1), options["height"], options["width"], 3)
    m = compare(torch.from_numpy(got) * 2 - 1, torch.from_numpy(expected) * 2 - 1, data_range=2.0)
    assert not E2E.failures(m), E2E.failures(m)


def test_torch_backend_is_the_pipeline(tiny_export):
    out = tiny_export("pixart", "sigma")
    request = _request(out, prompt="a dog", steps=2, height=32, width=64)
    expected = _diffusers(out, 3, **request.kwargs)
    got = Sampler(out, backend="torch")(request, 3)
    np.testing.assert_array_equal(got, expected)


def test_scheduler_swap_is_the_pipeline_with_that_scheduler(tiny_export):
    out = tiny_export("pixart", "sigma")
    request = _request(out, prompt="a dog", steps=3, height=32, width=32, scheduler="DDIMScheduler")
    manifest = load_manifest(out)
    pipe = diffusers.PixArtSigmaPipeline.from_pretrained(manifest.source_paths()[0].path)
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(generator=torch.Generator("cpu").manual_seed(1), output_type="np", **request.kwargs).images
    got = Sampler(out, backend="torch")(request, 1)
    np.testing.assert_array_equal(got, expected)
    default = Sampler(out, backend="torch")(_request(out, prompt="a dog", steps=3, height=32, width=32), 1)
    assert np.abs(default - got).max() > 1e-4  # the swap really changed the scheduler


def test_unknown_scheduler_is_refused(tiny_export):
    with pytest.raises(InputError, match=r"--scheduler 'Nope' is not a diffusers scheduler class; for example"):
        _request(tiny_export("pixart", "sigma"), prompt="x", scheduler="Nope")


def test_seed_changes_the_image(tiny_export):
    out = tiny_export("pixart", "sigma")
    sampler = Sampler(out)
    request = _request(out, prompt="x", steps=2)
    assert np.abs(sampler(request, 0) - sampler(request, 1)).max() > 1e-3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(height=72), r"--height 72: height must be a multiple of 16 pixels"),
        (dict(width=128), r"--width 128 is outside the exported profile: width must be in \[32, 96\] pixels"),
        (dict(batch=3), r"--batch 3 is outside the exported profile: batch must be in \[1, 2\]"),
        (dict(max_sequence_length=400), r"--max-sequence-length 400 is outside the exported profile"),
        (dict(height=64.0), r"height must be an integer, got 64.0"),
        (dict(guidance_scale=float("nan")), r"--guidance-scale nan: expected a finite number"),
    ],
)
def test_request_outside_export_is_rejected(tiny_export, options, message):
    with pytest.raises((EnvelopeError, ZooError), match=message):
        _request(tiny_export("pixart", "sigma"), prompt="x", **options)


def test_request_defaults_come_from_the_export(tiny_export):
    req = _request(tiny_export("pixart", "sigma"), prompt="x").kwargs
    assert (req["height"], req["width"], req["num_images_per_prompt"], req["max_sequence_length"]) == (64, 64, 1, 300)
    assert req["use_resolution_binning"] is False


def test_backends_load_when_first_used(tiny_export):
    out = tiny_export("pixart", "sigma")
    with Sampler(out) as sampler:
        assert not any(b.is_active for b in sampler.backends.values())
        sampler(_request(out, prompt="x", steps=1), 0)
        assert all(b.is_active for b in sampler.backends.values())
    assert not any(b.is_active for b in sampler.backends.values())  # closed with the sampler


def test_nan_from_a_component_stops_generation(tiny_export, monkeypatch):
    out = tiny_export("pixart", "sigma")
    sampler = Sampler(out)
    backend = sampler.backends["transformer"]
    monkeypatch.setattr(backend, "_run", lambda feeds: {"sample": torch.full((2, 8, 8, 8), float("nan"))})
    with pytest.raises(OutputError, match="component 'transformer' output 'sample': 1024 NaN"):
        sampler(_request(out, prompt="x", steps=2), 0)


def test_component_family_has_no_sampler(tiny_export):
    with pytest.raises(ZooError, match="family 'transformer-temporal' has no sampler"):
        Sampler(tiny_export("transformer-temporal", "default"))


@pytest.mark.cuda
def test_torch_backend_on_cuda_matches_cpu_pipeline(tiny_export):
    """GPU machines: the sampler on CUDA modules gives the CPU pipeline's image (TF32 off: fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = tiny_export("pixart", "alpha-1024")
    request = _request(out, prompt="a dog", steps=3, height=64, width=32)
    expected = _diffusers(out, 5, **request.kwargs)
    got = Sampler(out, backend="torch", device="cuda")(request, 5)
    m = compare(torch.from_numpy(got) * 2 - 1, torch.from_numpy(expected) * 2 - 1, data_range=2.0)
    assert not E2E.failures(m), E2E.failures(m)
