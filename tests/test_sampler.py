"""The sampler gives the diffusers pipeline's images, through ONNX Runtime and through torch."""

from __future__ import annotations

import diffusers
import numpy as np
import pytest
import torch

from exporters.manifest import load_manifest
from parity.metrics import compare
from parity.tolerances import tolerance
from runtimes.sampler import Sampler, check_request
from zoo.errors import EnvelopeError, OutputError, ZooError

E2E = tolerance("end_to_end", "float32", "tiny")


def _diffusers(export_dir, seed, **kwargs):
    manifest = load_manifest(export_dir)
    pipe = getattr(diffusers, manifest.pipeline).from_pretrained(manifest.source_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs).images


@pytest.mark.parametrize(
    "variant, request_kwargs",
    [
        ("sigma", dict(height=64, width=64, guidance_scale=4.5, max_sequence_length=300)),
        ("alpha-1024", dict(height=96, width=32, guidance_scale=3.0, max_sequence_length=120, num_images_per_prompt=2)),
        ("alpha-512", dict(height=48, width=80, guidance_scale=1.0, max_sequence_length=120)),
    ],
)
def test_onnxruntime_sampler_matches_diffusers(tiny_export, variant, request_kwargs):
    out = tiny_export("pixart", variant)
    kwargs = dict(prompt="a cat on a red sofa", negative_prompt="blurry", num_inference_steps=3,
                  use_resolution_binning=False, **request_kwargs)
    expected = _diffusers(out, 7, **kwargs)
    sampler = Sampler(out, backend="onnxruntime")
    sampler.pipeline.set_progress_bar_config(disable=True)
    got = sampler(generator=torch.Generator("cpu").manual_seed(7), output_type="np", **kwargs).images
    assert got.shape == expected.shape == (request_kwargs.get("num_images_per_prompt", 1), kwargs["height"], kwargs["width"], 3)
    m = compare(torch.from_numpy(got) * 2 - 1, torch.from_numpy(expected) * 2 - 1, data_range=2.0)
    assert not E2E.failures(m), E2E.failures(m)


def test_torch_backend_is_the_pipeline(tiny_export):
    out = tiny_export("pixart", "sigma")
    kwargs = dict(prompt="a dog", num_inference_steps=2, height=32, width=64, use_resolution_binning=False)
    expected = _diffusers(out, 3, **kwargs)
    sampler = Sampler(out, backend="torch")
    got = sampler(generator=torch.Generator("cpu").manual_seed(3), output_type="np", **kwargs).images
    np.testing.assert_array_equal(got, expected)


def test_seed_changes_the_image(tiny_export):
    sampler = Sampler(tiny_export("pixart", "sigma"))
    a = sampler(prompt="x", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    b = sampler(prompt="x", num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="np").images
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(height=72), r"--height 72: height must be a multiple of 16 pixels"),
        (dict(width=128), r"--width 128 is outside the exported profile: width must be in \[32, 96\] pixels"),
        (dict(num_images_per_prompt=3), r"--batch 3 is outside the exported profile: batch must be in \[1, 2\]"),
        (dict(max_sequence_length=400), r"--max-sequence-length 400 is outside the exported profile"),
        (dict(height=64.0), r"height must be an integer, got 64.0"),
    ],
)
def test_request_outside_export_is_rejected(tiny_export, kwargs, message):
    with pytest.raises((EnvelopeError, ZooError), match=message):
        check_request(load_manifest(tiny_export("pixart", "sigma")), kwargs)


def test_request_defaults_come_from_the_export(tiny_export):
    req = check_request(load_manifest(tiny_export("pixart", "sigma")), {"prompt": "x"})
    assert (req["height"], req["width"], req["num_images_per_prompt"], req["max_sequence_length"]) == (64, 64, 1, 300)


def test_nan_from_a_component_stops_generation(tiny_export, monkeypatch):
    sampler = Sampler(tiny_export("pixart", "sigma"))
    backend = sampler.backends["transformer"]
    monkeypatch.setattr(backend, "_run", lambda feeds: {"sample": torch.full((2, 8, 8, 8), float("nan"))})
    with pytest.raises(OutputError, match="component 'transformer' output 'sample': 1024 NaN"):
        sampler(prompt="x", num_inference_steps=2, output_type="np")


def test_component_family_has_no_sampler(tiny_export):
    with pytest.raises(ZooError, match="family 'transformer-temporal' has no sampler"):
        Sampler(tiny_export("transformer-temporal", "default"))


@pytest.mark.cuda
def test_torch_backend_on_cuda_matches_cpu_pipeline(tiny_export):
    """GPU machines: the sampler on CUDA modules gives the CPU pipeline's image (TF32 off: fp32)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = tiny_export("pixart", "alpha-1024")
    kwargs = dict(prompt="a dog", num_inference_steps=3, height=64, width=32, use_resolution_binning=False)
    expected = _diffusers(out, 5, **kwargs)
    sampler = Sampler(out, backend="torch", device="cuda")
    got = sampler(generator=torch.Generator("cpu").manual_seed(5), output_type="np", **kwargs).images
    m = compare(torch.from_numpy(got) * 2 - 1, torch.from_numpy(expected) * 2 - 1, data_range=2.0)
    assert not E2E.failures(m), E2E.failures(m)
