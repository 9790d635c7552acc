"""UniAnimate-DiT's sampler: the original's loop (``../shared/design/UNIANIMATE.md`` sections 4, 5, 7),
written once for any backend: the flow-matching schedule and step, TeaCache's plan of skipped DiT
calls, long video in overlapping context windows, CFG, and the tiled decode."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from zoo.errors import InputError
from zoo.families.unianimate_dit.vae_tiling import tiled_decode
from zoo.models.wan_encoders import TEXT_LENGTH

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# TeaCache's rescaling polynomial for Wan2.1-I2V-14B-720P (the original's, highest power first)
TEACACHE_COEFFICIENTS = (8.10705460e03, 2.13393892e03, -3.72934672e02, 1.66203073e01, -4.17769401e-02)


def flow_schedule(steps: int, shift: float = 5.0) -> torch.Tensor:
    """``FlowMatchScheduler(shift=5, sigma_min=0, extra_one_step=True)``: sigmas for each step, then 0."""
    sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.cat([sigmas, torch.zeros(1)])


def flow_step(sample: torch.Tensor, velocity: torch.Tensor, sigmas: torch.Tensor, i: int) -> torch.Tensor:
    """The original's ``FlowMatchScheduler.step`` at step ``i``: ``x + v * (sigma_{i+1} - sigma_i)``
    (``sigmas`` from :func:`flow_schedule`, whose last entry is the final 0)."""
    return sample + velocity * (sigmas[i + 1] - sigmas[i])


def teacache_rescale(rel_l1: float) -> float:
    """TeaCache's polynomial (Wan2.1-I2V-14B-720P) applied to one rel-L1 distance of ``t_mod``."""
    import numpy as np

    return float(np.poly1d(TEACACHE_COEFFICIENTS)(rel_l1))


def teacache_distances(t_mods: list[torch.Tensor]) -> list[float]:
    """TeaCache's rescaled distance of each call from the previous one (none for the first):
    ``poly(mean|t_mod - prev| / mean|prev|)`` over the whole ``t_mod``, in its dtype."""
    return [
        teacache_rescale(float((cur - prev).abs().mean() / prev.abs().mean())) for prev, cur in zip(t_mods, t_mods[1:])
    ]


def teacache_plan(t_mods: list[torch.Tensor], threshold: float) -> list[bool]:
    """Which calls TeaCache computes (True) or skips: the first and last always compute; otherwise
    the distances accumulate, a call skips while the sum is below ``threshold`` and computes (and
    resets the sum) once it is not. They depend only on the timestep schedule, so the plan is made
    before sampling."""
    distances = teacache_distances(t_mods)
    plan, acc = [], 0.0
    for i in range(len(t_mods)):
        if i in (0, len(t_mods) - 1):
            compute, acc = True, 0.0
        else:
            acc += distances[i - 1]
            compute = acc >= threshold
            if compute:
                acc = 0.0
        plan.append(compute)
    return plan


def context_windows(latent_frames: int, size: int, overlap: int) -> list[list[int]]:
    """The original's windows (its context scheduler at step 0), the last one moved to the end."""
    if latent_frames < size:
        raise InputError(
            f"--long-video needs at least {size} latent frames ({4 * size - 3} pose frames) for one "
            f"window of --context-frames {size}; the pose video gives {latent_frames}"
        )
    windows = [
        [(j + e) % latent_frames for e in range(size)] for j in range(0, latent_frames - overlap, size - overlap)
    ]
    windows[-1] = list(range(latent_frames - size, latent_frames))
    return windows


def long_video_step(
    latents: torch.Tensor,
    windows: list[list[int]],
    first: list[torch.Tensor],
    step_window: Callable[[int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """One step of the original's long-video loop: window ``k``'s latents with its first two latent
    frames replaced by its private state ``first[k]`` are stepped by ``step_window(k, x)``; the
    private state becomes the stepped first two frames (``first`` is updated in place); the new
    latents average the stepped windows frame by frame (window 0 with all its frames, the others
    without their first two)."""
    counter = torch.zeros(1, 1, latents.shape[2], 1, 1, dtype=latents.dtype)
    acc = torch.zeros_like(latents)
    for k, win in enumerate(windows):
        x = latents[:, :, win].clone()
        x[:, :, :2] = first[k]
        x_next = step_window(k, x)
        kept = win if k == 0 else win[2:]
        counter[:, :, kept] += 1
        acc[:, :, kept] += x_next if k == 0 else x_next[:, :, 2:]
        first[k] = x_next[:, :, :2]
    return acc / counter


class _Output:
    def __init__(self, frames: Any) -> None:
        self.frames = frames


class UniAnimateLoop:
    """UniAnimate-DiT's inference on exported components (``graphs(name, feeds)``), short video or
    long video in windows, with CFG and TeaCache; the same loop on the torch backend is the reference."""

    def __init__(self, graphs: Any, tokenizer: Any) -> None:
        self.graphs, self.tokenizer = graphs, tokenizer
        self.progress = True
        self.calls = {"transformer": 0, "transformer_skip": 0}

    def set_progress_bar_config(self, disable: bool = False, **_: Any) -> None:
        self.progress = not disable

    def progress_bar(self, iterable: Any = None, total: int | None = None) -> Any:
        """The denoising loop's bar, as a diffusers pipeline makes it (``zoo serve`` reports its steps)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc="sampling", leave=False, disable=not self.progress)

    def _run(self, name: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if name in self.calls:
            self.calls[name] += 1
        return self.graphs(name, feeds)

    # -- conditions -------------------------------------------------------------------
    def _text(self, prompt: str) -> torch.Tensor:
        # the original's whitespace_clean(basic_clean(text)) (ftfy, double HTML unescape, one space),
        # which diffusers' Wan I2V pipeline writes the same
        from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

        enc = self.tokenizer(
            prompt_clean(prompt),
            padding="max_length",
            max_length=TEXT_LENGTH,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = enc.input_ids, enc.attention_mask
        emb = self._run("text_encoder", {"input_ids": ids, "attention_mask": mask})["last_hidden_state"].clone()
        emb[:, int(mask.sum()) :] = 0
        return emb

    def _reference(self, image: Any, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """CLIP feature and the 20-channel I2V conditioning y (4 mask + z latent channels)."""
        import numpy as np

        x = torch.from_numpy(np.array(image.resize((width, height)), dtype=np.float32) * (2 / 255) - 1)
        x = x.permute(2, 0, 1)[None]  # (1, 3, H, W)
        size = self.graphs.image_size()
        pixels = torch.nn.functional.interpolate(x, (size, size), mode="bicubic", align_corners=False) * 0.5 + 0.5
        mean, std = torch.tensor(CLIP_MEAN)[None, :, None, None], torch.tensor(CLIP_STD)[None, :, None, None]
        clip = self._run("image_encoder", {"pixel_values": (pixels - mean) / std})["image_embeds"]
        h, w = height // 8, width // 8
        msk = torch.ones(1, frames, h, w)
        msk[:, 1:] = 0
        msk = torch.cat([msk[:, 0:1].repeat(1, 4, 1, 1), msk[:, 1:]], dim=1)
        msk = msk.view(1, (frames + 3) // 4, 4, h, w).transpose(1, 2)  # (1, 4, T, h, w)
        video = torch.cat([x.transpose(0, 1), torch.zeros(3, frames - 1, height, width)], dim=1)[None]
        z = self.graphs.vae_encode(video)[:, : self.graphs.config.z_dim]  # the mean
        mean_z, inv_std = self._latent_stats()
        return clip, torch.cat([msk, (z - mean_z) * inv_std], dim=1)

    def _latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.graphs.config
        mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return mean, 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    def _pose(self, frames: torch.Tensor) -> torch.Tensor:
        return self._run("pose_encoder", {"pose_frames": frames})["pose_features"]

    # -- one denoiser call (with TeaCache) ------------------------------------------------
    def _dit(self, latents, t, text, clip, y, pose, key, compute, residuals):
        hidden = torch.cat([latents, y], dim=1)
        if compute or key not in residuals:
            out = self._run(
                "transformer",
                {
                    "hidden_states": hidden,
                    "timestep": t,
                    "encoder_hidden_states": text,
                    "encoder_hidden_states_image": clip,
                    "pose_features": pose,
                },
            )
            residuals[key] = out["residual"]
            return out["noise_pred"]
        return self._run(
            "transformer_skip",
            {"hidden_states": hidden, "timestep": t, "pose_features": pose, "residual": residuals[key]},
        )["noise_pred"]

    def _velocity(self, x, t, cond, key, compute, residuals):
        text_pos, text_neg, clip, y, pose, cfg = cond
        v_pos = self._dit(x, t, text_pos, clip, y, pose, ("pos", key), compute, residuals)
        if cfg == 1.0:
            return v_pos
        v_neg = self._dit(x, t, text_neg, clip, y, torch.zeros_like(pose), ("neg", key), compute, residuals)
        return v_neg + cfg * (v_pos - v_neg)

    # -- the whole run -------------------------------------------------------------------
    def __call__(
        self,
        *,
        image,
        pose_video,
        ref_pose,
        prompt="",
        negative_prompt="",
        height,
        width,
        num_inference_steps=50,
        guidance_scale=1.5,
        long_video=False,
        context_frames=21,
        context_overlap=4,
        teacache=None,
        tiled=True,
        generator=None,
        output_type="np",
    ) -> _Output:

        pose = torch.from_numpy(_stack(pose_video)).permute(3, 0, 1, 2)[None].float()  # (1, 3, F, H, W) 0..255
        frames = pose.shape[2]
        latent_frames = (frames - 1) // 4 + 1
        z_dim = self.graphs.config.z_dim
        noise = torch.randn(
            (1, z_dim, latent_frames, height // 8, width // 8), generator=generator, dtype=torch.float32
        )
        if long_video:
            windows = context_windows(latent_frames, context_frames, context_overlap)
            first = [torch.randn((1, z_dim, 2, height // 8, width // 8), generator=generator) for _ in windows]
            window_frames = 4 * context_frames - 3
        else:
            windows, first, window_frames = [list(range(latent_frames))], None, frames
        text_pos = self._text(prompt)
        text_neg = self._text(negative_prompt) if guidance_scale != 1.0 else None
        clip, y = self._reference(image, window_frames, height, width)
        ref = self._run(
            "ref_pose_encoder", {"ref_pose": torch.from_numpy(_stack([ref_pose])[0]).permute(2, 0, 1)[None].float()}
        )
        y = y + ref["ref_pose_features"][:, :, None]
        poses = [self._pose(pose[:, :, 4 * win[0] : 4 * win[-1] + 1]) for win in windows]

        sigmas = flow_schedule(num_inference_steps)
        timesteps = [sigmas[i : i + 1] * 1000 for i in range(num_inference_steps)]
        plan = [True] * num_inference_steps
        if teacache is not None:
            plan = teacache_plan([self._run("time_embedding", {"timestep": t})["t_mod"] for t in timesteps], teacache)
        residuals: dict = {}
        latents = noise
        for i in self.progress_bar(range(num_inference_steps)):
            t = timesteps[i]
            if not long_video:
                v = self._velocity(
                    latents, t, (text_pos, text_neg, clip, y, poses[0], guidance_scale), 0, plan[i], residuals
                )
                latents = flow_step(latents, v, sigmas, i)
                continue

            def step_window(k: int, x: torch.Tensor, i: int = i, t: torch.Tensor = t) -> torch.Tensor:
                v = self._velocity(x, t, (text_pos, text_neg, clip, y, poses[k], guidance_scale), k, plan[i], residuals)
                return flow_step(x, v, sigmas, i)

            latents = long_video_step(latents, windows, first, step_window)
        mean_z, inv_std = self._latent_stats()
        z = latents / inv_std + mean_z
        decode = lambda part: self.graphs.vae_decode(part)  # noqa: E731 (unclamped chunks)
        video = tiled_decode(decode, z, 8) if tiled else decode(z).clamp(-1.0, 1.0)
        frames_out = ((video + 1) / 2).clamp(0, 1).permute(0, 2, 3, 4, 1)  # (1, F, H, W, 3)
        return _Output(frames_out.cpu().numpy())


def _stack(images: list) -> Any:
    import numpy as np

    return np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
