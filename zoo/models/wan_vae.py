"""The Wan VAE (diffusers ``AutoencoderKLWan``) as chunk graphs with explicit cache inputs and
outputs, shared by the Wan families (wan-animate, unianimate-dit).

``AutoencoderKLWan`` encodes a first frame and then chunks of 4 frames, and decodes one latent
frame at a time; between chunks its causal convolutions keep a Python list of cached frames
(``feat_cache``: ``None``, 1-frame tensors and the ``"Rep"`` sentinel after the first chunk, 2-frame
tensors from then on). A plain export unrolls that loop for the example frame count. Here each
half is two graphs:

- ``*_first``: the first chunk (no cache in), returning its output and every cache already in
  the steady shape: a 1-frame cache is prepended with a zero frame and ``"Rep"`` becomes zeros,
  which the causal convolutions' zero padding makes equal (proven by the chunk-loop parity);
- ``*_step``: a steady chunk, caches in and out (declared state pairs, kept on the backend's
  device), so the host loops over chunks and memory stays flat as videos get longer.

The caches are computed from the config: the VAE is built on the meta device and run on one
chunk, so no weights are read; each cache's height and width are derived dims of the latent size.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from zoo.contract import (
    Component,
    Dim,
    DimsFn,
    Envelope,
    HostLoop,
    LoopCheck,
    PipelineSlot,
    Precision,
    Reference,
    Runners,
    TensorSpec,
)
from zoo.errors import ArtifactError, CheckpointError

# the Wan VAE runs in fp32 (MODELS.md)
PRECISION = Precision(keep_fp32=("*",))
# decoded frames (unclamped in the graph: the host clamps to it); the caches have no range of their own
IMAGE_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class CacheSlot:
    """One used cache of a VAE half in its steady shape ``(B, channels, frames, s*h, s*w)``,
    ``s`` = ``scale`` times the latent size."""

    index: int  # position in the library's feat_cache list
    channels: int
    frames: int
    scale: int


def check_vae(ref: Reference) -> None:
    """Refuse the AutoencoderKLWan configurations the chunk graphs (or the library) cannot run."""
    cfg = ref.config("vae")
    if cfg.patch_size is not None:
        raise CheckpointError(
            "this AutoencoderKLWan patchifies its input (patch_size is set, as in Wan2.2 TI2V-5B): "
            "its chunk graphs are not supported yet"
        )
    if list(cfg.attn_scales):
        raise CheckpointError(
            f"this AutoencoderKLWan has attention at scales {list(cfg.attn_scales)}: diffusers' own "
            f"chunked encode fails on it (WanAttentionBlock takes no feature cache)"
        )
    if cfg.scale_factor_spatial not in (None, spatial_factor(ref)) or cfg.scale_factor_temporal not in (
        None,
        temporal_factor(ref),
    ):
        raise CheckpointError(
            f"this AutoencoderKLWan's scale factors (spatial {cfg.scale_factor_spatial}, temporal "
            f"{cfg.scale_factor_temporal}) disagree with its layers (spatial {spatial_factor(ref)}, temporal "
            f"{temporal_factor(ref)}): the pipeline would cut frames and sizes wrongly"
        )


def temporal_factor(ref: Reference) -> int:
    """Pixel frames per latent frame after the first: 2 ** (number of temporal downsamples)."""
    return 2 ** sum(bool(t) for t in ref.config("vae").temperal_downsample)


def spatial_factor(ref: Reference) -> int:
    return 2 ** (len(ref.config("vae").dim_mult) - 1)


@functools.lru_cache(maxsize=16)
def _probe(config_items: tuple, part: str) -> tuple[CacheSlot, ...]:
    """The used cache slots of ``part`` in their steady shape, found by running two chunks of the
    library code on the meta device (shapes only, no weights)."""
    from diffusers import AutoencoderKLWan

    config = {k: list(v) if isinstance(v, tuple) else v for k, v in config_items}
    with torch.device("meta"):
        vae = AutoencoderKLWan.from_config(config)
        h, w = 2, 3
        t = 2 ** sum(bool(x) for x in config["temperal_downsample"])
        s = 2 ** (len(config["dim_mult"]) - 1)
        if part == "encoder":
            x = torch.zeros(1, 3, 1 + t, s * h, s * w)
            cache: list = [None] * vae._cached_conv_counts["encoder"]
            vae.encoder(x[:, :, :1], feat_cache=cache, feat_idx=[0])
            vae.encoder(x[:, :, 1:], feat_cache=cache, feat_idx=[0])
        else:
            z = vae.post_quant_conv(torch.zeros(1, config["z_dim"], 2, h, w))
            cache = [None] * vae._cached_conv_counts["decoder"]
            vae.decoder(z[:, :, :1], feat_cache=cache, feat_idx=[0], first_chunk=True)
            vae.decoder(z[:, :, 1:], feat_cache=cache, feat_idx=[0])
    slots = []
    for i, c in enumerate(cache):
        if isinstance(c, torch.Tensor):
            assert c.shape[3] % h == 0 and c.shape[3] // h == c.shape[4] // w, c.shape
            slots.append(CacheSlot(i, c.shape[1], c.shape[2], c.shape[3] // h))
    return tuple(slots)


def cache_slots(ref: Reference, part: str) -> tuple[CacheSlot, ...]:
    config = ref.config("vae")
    items = tuple(
        sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in dict(config).items() if not k.startswith("_"))
    )
    return _probe(items, part)


def _scaled(name: str, scale: int) -> str:
    return name if scale == 1 else f"{name}_x{scale}"


def _cache_specs(slots: tuple[CacheSlot, ...], prefix: str) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            f"{prefix}{j}",
            "float32",
            ("batch", s.channels, s.frames, _scaled("latent_height", s.scale), _scaled("latent_width", s.scale)),
        )
        for j, s in enumerate(slots)
    )


def vae_dims(batch: Dim, env: Envelope, ref: Reference) -> dict[str, Dim]:
    """Batch, latent height / width from the envelope's pixels, and every scaled size the caches
    and pixels need (derived dims of the latent size)."""
    s = spatial_factor(ref)
    h = Dim.of_range("latent_height", env["height"].scaled(1, s))
    w = Dim.of_range("latent_width", env["width"].scaled(1, s))
    cfg = ref.config("vae")
    dims = {
        batch.name: batch,
        "latent_height": h,
        "latent_width": w,
        "z_dim": Dim.static("z_dim", cfg.z_dim),
        "latent_parameters": Dim.static("latent_parameters", 2 * cfg.z_dim),
    }
    scales = {slot.scale for part in ("encoder", "decoder") for slot in cache_slots(ref, part)}
    for scale in sorted(scales - {1}):
        for base in (h, w):
            dims[_scaled(base.name, scale)] = Dim.derived(_scaled(base.name, scale), base, scale=scale)
    dims["height"] = Dim.derived("height", h, scale=s)  # pixels
    dims["width"] = Dim.derived("width", w, scale=s)
    return dims


def _named_module(names: list[str], body: Any) -> nn.Module:
    """An ``nn.Module`` whose ``forward`` takes ``names`` as its parameters (torch.export binds
    inputs by parameter name) and calls ``body(*tensors)``."""
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {', '.join(names)}):\n    return self.body({', '.join(names)})", namespace)  # noqa: S102
    cls = type("ChunkGraph", (nn.Module,), {"forward": namespace["forward"]})
    module = cls()
    module.body = body
    return module


# --------------------------------------------------------------------------------------
# One chunk through the library's encoder / decoder with an explicit cache list
# --------------------------------------------------------------------------------------


def _steady(c: Any, slot: CacheSlot, like: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A first-chunk cache in its steady shape: ``"Rep"`` -> zeros, a shorter cache prepended
    with zero frames (the causal convolution pads with zeros)."""
    if not isinstance(c, torch.Tensor):
        return like.new_zeros(like.shape[0], slot.channels, slot.frames, slot.scale * h, slot.scale * w)
    if c.shape[2] < slot.frames:
        c = torch.cat([c.new_zeros(*c.shape[:2], slot.frames - c.shape[2], *c.shape[3:]), c], dim=2)
    return c


def encode_chunk(vae: nn.Module, slots: tuple[CacheSlot, ...], x: torch.Tensor, caches: tuple | None) -> tuple:
    """``quant_conv(encoder(chunk))`` and the caches after it (steady shapes)."""
    feat: list = [None] * vae._cached_conv_counts["encoder"]
    if caches is not None:
        for slot, c in zip(slots, caches):
            feat[slot.index] = c
    out = vae.quant_conv(vae.encoder(x, feat_cache=feat, feat_idx=[0]))
    h, w = out.shape[3], out.shape[4]
    return (out, *(_steady(feat[s.index], s, out, h, w) for s in slots))


def decode_chunk(vae: nn.Module, slots: tuple[CacheSlot, ...], z: torch.Tensor, caches: tuple | None) -> tuple:
    """``decoder(post_quant_conv(latent frame))``, unclamped (the host clamps, as the library does
    after the loop, and a tiled decode blends unclamped tiles), and the caches after it."""
    feat: list = [None] * vae._cached_conv_counts["decoder"]
    if caches is not None:
        for slot, c in zip(slots, caches):
            feat[slot.index] = c
    out = vae.decoder(vae.post_quant_conv(z), feat_cache=feat, feat_idx=[0], first_chunk=caches is None)
    h, w = z.shape[3], z.shape[4]
    return (out, *(_steady(feat[s.index], s, z, h, w) for s in slots))


def _wrapper(ref: Reference, part: str, first: bool) -> nn.Module:
    vae = ref.module("vae")
    slots = cache_slots(ref, part)
    run = encode_chunk if part == "encoder" else decode_chunk
    names = ["sample"] + ([] if first else [f"cache_{j}" for j in range(len(slots))])
    module = _named_module(names, lambda x, *caches: run(vae, slots, x, None if first else caches))
    module.vae = vae  # registered: its parameters are the graph's weights
    return module


def _reference(part: str, first: bool):
    def call(ref: Reference, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        slots = cache_slots(ref, part)
        caches = None if first else tuple(feeds[f"cache_{j}"] for j in range(len(slots)))
        run = encode_chunk if part == "encoder" else decode_chunk
        out, *new = run(ref.module("vae"), slots, feeds["sample"], caches)
        name = "latent_parameters" if part == "encoder" else "frames"
        return {name: out, **{f"cache_out_{j}": c for j, c in enumerate(new)}}

    return call


def _io(part: str, first: bool):
    def inputs(ref: Reference) -> tuple[TensorSpec, ...]:
        frames = 1 if first else temporal_factor(ref)
        x = (
            TensorSpec("sample", "float32", ("batch", 3, frames, "height", "width"), sample="pixels")
            if part == "encoder"
            else TensorSpec("sample", "float32", ("batch", "z_dim", 1, "latent_height", "latent_width"))
        )
        return (x,) + (() if first else _cache_specs(cache_slots(ref, part), "cache_"))

    def outputs(ref: Reference) -> tuple[TensorSpec, ...]:
        frames = 1 if first else temporal_factor(ref)
        y = (
            TensorSpec(
                "latent_parameters", "float32", ("batch", "latent_parameters", 1, "latent_height", "latent_width")
            )
            if part == "encoder"
            else TensorSpec("frames", "float32", ("batch", 3, frames, "height", "width"), value_range=IMAGE_RANGE)
        )
        return (y,) + _cache_specs(cache_slots(ref, part), "cache_out_")

    return inputs, outputs


def chunk_components(dims: DimsFn) -> tuple[Component, ...]:
    """``vae_encoder_first``, ``vae_encoder_step``, ``vae_decoder_first``, ``vae_decoder_step``."""
    out = []
    for part in ("encoder", "decoder"):
        for first in (True, False):
            inputs, outputs = _io(part, first)

            def n_state(ref, part=part):
                return {f"cache_out_{j}": f"cache_{j}" for j in range(len(cache_slots(ref, part)))}

            out.append(
                Component(
                    name=f"vae_{part}_{'first' if first else 'step'}",
                    tolerance=f"vae_{part}",
                    module="vae",
                    inputs=inputs,
                    outputs=outputs,
                    dims=dims,
                    wrapper=functools.partial(_wrapper, part=part, first=first),
                    reference=_reference(part, first),
                    precision=PRECISION,
                    state=(lambda ref: {}) if first else n_state,
                )
            )
    return tuple(out)


# --------------------------------------------------------------------------------------
# The host loop over chunks, as AutoencoderKLWan.encode / decode loop
# --------------------------------------------------------------------------------------


def _loop(runners: Runners, part: str, chunks: list[torch.Tensor]) -> torch.Tensor:
    first, step = runners[f"vae_{part}_first"], runners[f"vae_{part}_step"]
    name = "latent_parameters" if part == "encoder" else "frames"
    out = first({"sample": chunks[0]})
    outputs = [out[name]]
    if len(chunks) > 1:
        n = len([k for k in out if k.startswith("cache_out_")])
        step.reset_state()
        step.set_state({f"cache_{j}": out[f"cache_out_{j}"] for j in range(n)})
        for chunk in chunks[1:]:
            outputs.append(step({"sample": chunk})[name])  # caches stay on the backend between calls
        step.reset_state()
    return torch.cat(outputs, dim=2)


def encode(runners: Runners, x: torch.Tensor) -> torch.Tensor:
    """``AutoencoderKLWan._encode``: the first frame, then chunks of as many frames as a latent
    frame holds (leftover frames are dropped, as the library drops them); the distribution's
    parameters."""
    if not {"vae_encoder_first", "vae_encoder_step"} <= set(runners):
        raise ArtifactError("this export has no VAE encoder graphs; re-export without --component")
    factor = int(runners["vae_encoder_step"].record.inputs[0].shape[2])  # a static dim
    count = 1 + (x.shape[2] - 1) // factor
    chunks = [x[:, :, :1]] + [x[:, :, 1 + factor * (i - 1) : 1 + factor * i] for i in range(1, count)]
    return _loop(runners, "encoder", chunks)


def decode(runners: Runners, z: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """``AutoencoderKLWan._decode``: one latent frame at a time, then clamped to [-1, 1]."""
    out = _loop(runners, "decoder", [z[:, :, i : i + 1] for i in range(z.shape[2])])
    return out.clamp(-1.0, 1.0) if clamp else out


CHUNK_COMPONENTS = ("vae_encoder_first", "vae_encoder_step", "vae_decoder_first", "vae_decoder_step")


def vae_slot() -> PipelineSlot:
    """The pipeline's ``vae``: ``encode`` / ``decode`` loop over the chunk graphs."""

    def call_encode(runners: Runners, x: torch.Tensor, return_dict: bool = True) -> Any:
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
        from diffusers.models.modeling_outputs import AutoencoderKLOutput

        posterior = DiagonalGaussianDistribution(encode(runners, x))
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def call_decode(runners: Runners, z: torch.Tensor, return_dict: bool = True, **_: Any) -> Any:
        from diffusers.models.autoencoders.vae import DecoderOutput

        sample = decode(runners, z)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    return PipelineSlot(
        "vae",
        "vae",
        {"encode": call_encode, "decode": call_decode},
        ("vae_encoder_first", "vae_encoder_step", "vae_decoder_first", "vae_decoder_step"),
    )


def loop_checks(
    ref: Reference,
    runners: Runners,
    envelope: Envelope,
    seed: int = 0,
    frame_counts: tuple[int, ...] = (1, 5, 9, 15),
) -> list[LoopCheck]:
    """The chunk loops against ``AutoencoderKLWan.encode`` / ``decode`` at several pixel frame
    counts (an odd longer one too, whose leftover frames the library drops), at the opt size."""
    vae = ref.module("vae")
    s = spatial_factor(ref)
    height, width = envelope["height"].opt, envelope["width"].opt
    gen = torch.Generator("cpu").manual_seed(seed)
    checks: list[LoopCheck] = []
    with torch.no_grad():
        for frames in frame_counts:
            x = torch.rand(1, 3, frames, height, width, generator=gen) * 2 - 1
            checks.append(
                LoopCheck(
                    "vae_encoder_step",
                    f"encode {frames} frames",
                    "latent_parameters",
                    encode(runners, x),
                    vae.encode(x).latent_dist.parameters,
                )
            )
            latent = 1 + (frames - 1) // temporal_factor(ref)
            z = torch.randn(1, vae.config.z_dim, latent, height // s, width // s, generator=gen)
            checks.append(
                LoopCheck(
                    "vae_decoder_step",
                    f"decode {latent} latent frames",
                    "frames",
                    decode(runners, z),
                    vae.decode(z).sample,
                )
            )
    return checks


# The chunk loops, declared whole: the graphs they run and their checks (every Wan VAE family's)
HOST_LOOP = HostLoop(components=CHUNK_COMPONENTS, checks=loop_checks)
