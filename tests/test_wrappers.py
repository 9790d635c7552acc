"""Export wrappers compute what the library modules compute, in eager torch, at many shapes."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.embeddings import get_2d_sincos_pos_embed

from zoo.families.pixart.family import PixArtTransformerExport
from zoo.registry import get_family

CASES = [("pixart", v) for v in ("sigma", "alpha-1024", "alpha-512")] + [
    ("transformer-temporal", v) for v in ("default", "single-group", "sinusoidal")
]


@pytest.mark.parametrize("family, variant", CASES)
def test_wrapper_matches_reference_at_corners(tiny_checkpoint, family, variant):
    from parity.points import profile_points

    fam = get_family(family)
    ref = fam.load(tiny_checkpoint(family, variant))
    env = fam.envelope(ref)
    for component in fam.components:
        dims = component.dims(env, ref)
        wrapper = component.wrapper(ref).eval()
        for label, point in profile_points(dims)[:6]:
            feeds = component.sample_inputs(ref, point, seed=1)
            with torch.no_grad():
                expected = component.reference(ref, feeds)
                got = wrapper(**feeds)
            ((name, want),) = expected.items() if len(expected) == 1 else pytest.fail("one output expected")
            assert got.shape == want.shape, (component.name, label)
            torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5, msg=f"{component.name} at {label}")


@pytest.mark.parametrize("h, w", [(4, 4), (6, 10), (16, 8), (64, 64)])
def test_pixart_position_embedding_matches_diffusers(tiny_checkpoint, h, w):
    ref = get_family("pixart").load(tiny_checkpoint("pixart", "sigma"))
    wrapper = PixArtTransformerExport(ref.module("transformer"))
    pe = ref.module("transformer").pos_embed
    expected = get_2d_sincos_pos_embed(
        pe.pos_embed.shape[-1],
        (h, w),
        base_size=pe.base_size,
        interpolation_scale=pe.interpolation_scale,
        output_type="pt",
    ).float()
    torch.testing.assert_close(wrapper.position_embedding(h, w), expected, atol=2e-6, rtol=0)
