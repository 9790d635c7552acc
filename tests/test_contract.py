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
    with pytest.raises(
        UnknownFamilyError,
        match=r"unknown family 'nope'; known families: animatediff, pixart, transformer-temporal, unianimate-dit, unianimate-pose, wan-animate, wan-animate-pose",
    ):
        get_family("nope")
    assert family_names() == [
        "animatediff",
        "pixart",
        "transformer-temporal",
        "unianimate-dit",
        "unianimate-pose",
        "wan-animate",
        "wan-animate-pose",
    ]


def test_every_family_has_tiny_preset_and_variants():
    for name in family_names():
        fam = get_family(name)
        assert "tiny" in fam.random_presets
        assert fam.variants and fam.components


def test_unknown_component_names_the_components():
    with pytest.raises(
        UnknownFamilyError, match="has no component 'unet'; its components are text_encoder, transformer, vae_decoder"
    ):
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


# --------------------------------------------------------------------------------------
# Host loops and rounding points: declared whole, naming what the family has
# --------------------------------------------------------------------------------------


def _family_class(**attributes):
    """A Family subclass with ``attributes`` (declared as a family module would)."""
    from zoo.contract import Component, Family

    component = Component(
        "vae_decoder_step",
        "vae_decoder",
        "vae",
        inputs=lambda ref: (),
        outputs=lambda ref: (),
        dims=lambda env, ref: {},
        wrapper=lambda ref: None,
        reference=lambda ref, feeds: {},
    )
    return type("Probe", (Family,), {"name": "probe", "components": (component,), **attributes})


def test_a_host_loop_is_declared_whole():
    from zoo.contract import HostLoop

    checks = lambda ref, runners, envelope, seed=0: []  # noqa: E731
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'checks'"):
        HostLoop(components=("vae_decoder_step",))  # components without checks cannot be declared
    with pytest.raises(TypeError, match=r"HostLoop.components: expected component names, got \(\)"):
        HostLoop((), checks)
    with pytest.raises(TypeError, match="HostLoop.checks: expected a function"):
        HostLoop(("vae_decoder_step",), None)
    for half in ({"loop_components": ("vae_decoder_step",)}, {"loop_checks": checks}):
        with pytest.raises(
            TypeError,
            match=f"Probe declares {next(iter(half))}: declare a host loop whole, as "
            r"host_loop = HostLoop\(components=..., checks=...\)",
        ):
            _family_class(**half)
    with pytest.raises(
        TypeError,
        match="Probe: host loop component 'vae_decoder_first' is not one of its components "
        r"\(vae_decoder_step\)",
    ):
        _family_class(host_loop=HostLoop(("vae_decoder_first", "vae_decoder_step"), checks))
    assert _family_class(host_loop=HostLoop(("vae_decoder_step",), checks)).host_loop.checks is checks


def test_families_with_chunk_graphs_declare_the_wan_vae_loop():
    """Both Wan VAE families run the same chunk loop, declared once (UniAnimate had components but no checks)."""
    from zoo.models import wan_vae

    for name in family_names():
        fam = get_family(name)
        assert not hasattr(fam, "loop_components") and not hasattr(fam, "loop_checks"), name
        has_chunks = set(wan_vae.CHUNK_COMPONENTS) <= {c.name for c in fam.components}
        assert (fam.host_loop is wan_vae.HOST_LOOP) == has_chunks, name
    assert wan_vae.HOST_LOOP.checks is wan_vae.loop_checks
    assert wan_vae.HOST_LOOP.components == wan_vae.CHUNK_COMPONENTS


def test_rounding_declarations_name_real_outputs(tiny_checkpoint):
    from zoo.contract import Rounding

    with pytest.raises(
        TypeError, match="Rounding of pose_encoder.pose_features: dtype must be bfloat16 or float16, got 'float32'"
    ):
        Rounding("pose_encoder", "pose_features", "float32")
    with pytest.raises(TypeError, match="Probe: rounding component 'pose_encoder' is not one of its components"):
        _family_class(roundings=(Rounding("pose_encoder", "pose_features", "bfloat16"),))
    fam = get_family("unianimate-dit")
    assert {(r.component, r.output, r.dtype) for r in fam.roundings} == {
        ("pose_encoder", "pose_features", "bfloat16"),
        ("ref_pose_encoder", "ref_pose_features", "bfloat16"),
    }
    for name in family_names():
        fam = get_family(name)
        if not fam.roundings:
            continue
        ref = fam.load(tiny_checkpoint(name))
        for r in fam.roundings:
            assert r.output in {s.name for s in fam.component(r.component).output_specs(ref)}, (name, r)


# --------------------------------------------------------------------------------------
# Request defaults come from the Option declarations alone
# --------------------------------------------------------------------------------------


def _frames(folder, count: int, height: int, width: int):
    """A folder of ``count`` PNG frames (what --pose-video and friends accept)."""
    import numpy as np
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(count)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(folder / f"frame{i}.png")
    return folder


def _image(path, height: int, width: int):
    return _frames(path.parent / (path.name + ".d"), 1, height, width) / "frame0.png"


def _required(name: str, context, tmp_path) -> list[dict]:
    """The options a user must give (media made at the export's opt size), and each mode whose own
    defaults apply only in it (a long video's windows, FreeInit's filter)."""
    env = context.envelope
    h, w = env["height"].opt, env["width"].opt
    if name in ("pixart", "animatediff"):
        base = {"prompt": "a red fox"}
        return [base, {**base, "free_init": 2}] if name == "animatediff" else [base]
    if name == "wan-animate":
        size = context.configs["transformer"]["motion_encoder_size"]
        frames = env["segment_frames"].opt
        return [
            {
                "image": _image(tmp_path / "image", h, w),
                "pose_video": _frames(tmp_path / "pose", frames, h, w),
                "face_video": _frames(tmp_path / "face", frames, size, size),
            }
        ]
    if name == "unianimate-dit":
        base = {
            "image": _image(tmp_path / "image", h, w),
            "ref_pose": _image(tmp_path / "ref", h, w),
            "pose_video": _frames(tmp_path / "pose", env["frames"].opt, h, w),
        }
        return [base, {**base, "long_video": True, "pose_video": _frames(tmp_path / "long", 4 * 21 - 3, h, w)}]
    raise AssertionError(f"family {name} has a sampler: say here which options a request of it needs")


@pytest.mark.parametrize("name", [n for n in family_names() if get_family(n).has_sampler])
def test_request_defaults_are_the_option_defaults(name, tiny_checkpoint, tmp_path):
    """A request that omits every optional option (a server's, a parity request's) is the request
    `zoo run` makes with every option at its declared default (AnimateDiff's steps were 25 vs 20)."""
    from exporters.onnx import _json_config
    from zoo.contract import RequestContext

    fam = get_family(name)
    ref = fam.load(tiny_checkpoint(name))
    context = RequestContext(
        envelope=fam.envelope(ref),
        axes={a.name: a for a in fam.axes(ref)},
        configs={s.module: _json_config(ref.config(s.module)) for s in fam.pipeline_slots},
        components=tuple(c.name for c in fam.components),
        pipeline=ref.pipeline,
    )
    declared = {o.name: False if o.type == "flag" else o.default for o in fam.run_options}  # what click passes
    assert any(o.default is not None for o in fam.run_options if not o.required)
    for given in _required(name, context, tmp_path):
        omitted = fam.request(given, context)
        assert omitted == fam.request({**declared, **given}, context), (name, given)
        steps = next(o.default for o in fam.run_options if o.name == "steps")
        assert omitted.kwargs["num_inference_steps"] == steps
