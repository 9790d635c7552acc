"""The declarative contract: ranges, axes, envelopes, dims, sample inputs, the registry."""

from __future__ import annotations

import pytest
import torch

from exporters.onnx import example_point
from parity.points import profile_points
from zoo.contract import Axis, Dim, Range, TensorSpec, make_sample
from zoo.errors import EnvelopeError, UnknownFamilyError
from zoo.registry import family_names, get_family


def test_range_parse_forms_and_errors():
    assert Range.parse("64:128:256", what="--height") == Range(64, 128, 256)
    assert Range.parse("16", what="--frames") == Range(16, 16, 16)
    with pytest.raises(EnvelopeError, match=r"--height: expected MIN:OPT:MAX or N, got '1:2'"):
        Range.parse("1:2", what="--height")
    with pytest.raises(EnvelopeError, match="--batch: expected integers"):
        Range.parse("a:b:c", what="--batch")


@pytest.mark.parametrize(
    "r, message",
    [
        (Range(128, 64, 256), "expected MIN <= OPT <= MAX"),
        (Range(64, 100, 128), r"height must be a multiple of 16 pixels, got 100"),
        (Range(0, 64, 128), "height must be at least 16 pixels"),
        (Range(64, 64, 4096), "height can be at most 2048 pixels"),
    ],
)
def test_axis_check_names_axis_and_constraint(r, message):
    axis = Axis("height", Range(64, 64, 64), multiple_of=16, floor=16, ceiling=2048, unit="pixels")
    with pytest.raises(EnvelopeError, match=message) as e:
        axis.check(r)
    assert str(e.value).startswith(f"--height {r}")


def test_unknown_family_lists_known_ones():
    with pytest.raises(UnknownFamilyError, match=r"unknown family 'nope'; known families: animatediff, pixart, transformer-temporal, unianimate-dit, wan-animate"):
        get_family("nope")
    assert family_names() == ["animatediff", "pixart", "transformer-temporal", "unianimate-dit", "wan-animate"]


def test_every_family_has_tiny_preset_and_variants():
    for name in family_names():
        fam = get_family(name)
        assert "tiny" in fam.random_presets
        assert fam.variants and fam.components


def test_unknown_component_names_the_components():
    with pytest.raises(UnknownFamilyError, match="has no component 'unet'; its components are text_encoder, transformer, vae_decoder"):
        get_family("pixart").component("unet")


def test_mask_sample_keeps_a_token_per_row():
    spec = TensorSpec("m", "int64", ("b", "l"), sample="mask")
    t = make_sample(spec, (64, 7), torch.Generator().manual_seed(0), None)
    assert t.dtype == torch.int64 and t.shape == (64, 7)
    assert (t[:, 0] == 1).all()
    # a row is ones then zeros
    assert (t[:, 1:] <= t[:, :-1]).all()


def test_example_point_avoids_one_and_collisions():
    dims = {
        "batch": Dim("batch", 1, 1, 4),
        "h": Dim("h", 4, 8, 12, multiple_of=2),
        "w": Dim("w", 4, 8, 12, multiple_of=2),
        "c": Dim("c", 4, 4, 4),
    }
    p = example_point(dims)
    assert p["batch"] == 2  # never 1 for a dynamic dim
    assert p["h"] == 8 and p["w"] == 10  # distinct, valid multiples
    assert p["c"] == 4
    # with multiple_of m torch.export's symbol is size / m: that must not be 1 either
    p = example_point({"latent_height": Dim("latent_height", 8, 8, 16, multiple_of=8)})
    assert p["latent_height"] == 16


def test_profile_points_cover_every_corner():
    dims = {
        "b": Dim("b", 1, 2, 4),
        "latent_height": Dim("latent_height", 4, 8, 16, 2),
        "latent_width": Dim("latent_width", 4, 8, 16, 2),
        "c": Dim("c", 3, 3, 3),
    }
    points = profile_points(dims)
    values = [tuple(p[k] for k in ("b", "latent_height", "latent_width")) for _, p in points]
    for b in (1, 4):
        for h in (4, 16):
            for w in (4, 16):
                assert (b, h, w) in values
    labels = [label for label, _ in points]
    assert {"opt", "all-min", "all-max", "interior", "portrait", "landscape"} <= set(labels)
    interior = dict(points)["interior"]
    assert all(dims[k].min <= v <= dims[k].max and v % dims[k].multiple_of == 0 for k, v in interior.items())
    assert len(values) == len(set(values))
