"""Wan-Animate benchmarks on an export (``zoo export wan-animate --random bench ...``):

1. the chunked VAE decode's peak RSS at 17 and then 81 pixel frames, in one process (peak RSS
   only grows, so 81 <= 1.2 x 17 means the chunk loop keeps memory flat);
2. the face encoder's share of a denoising step, called every step (the library's forward) and
   once per segment and CFG branch (this sampler).

Usage: python scripts/bench_wan_animate.py EXPORT_DIR [--steps 20] [--iterations 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from exporters.manifest import load_manifest
from runtimes.backends import Runners
from zoo.models import wan_vae
from zoo.registry import get_family


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def vae_memory(export: str, frame_counts: tuple[int, ...] = (17, 81)) -> list[dict]:
    manifest = load_manifest(export)
    record = manifest.component("vae_decoder_step")
    z_dim, h, w = record.dims["z_dim"].min, record.dims["latent_height"].opt, record.dims["latent_width"].opt
    rows = []
    with torch.no_grad():
        runners = Runners("onnxruntime", manifest)
        for frames in frame_counts:
            z = torch.randn(1, z_dim, (frames - 1) // 4 + 1, h, w)
            start = time.perf_counter()
            video = wan_vae.decode(runners, z)
            rows.append(
                {
                    "pixel_frames": frames,
                    "shape": list(video.shape),
                    "seconds": time.perf_counter() - start,
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
            del video
        runners.close()
    return rows


def _median_ms(backend, feeds, iterations: int) -> float:
    backend(feeds)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.infer(feeds)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def face_share(export: str, steps: int, iterations: int) -> dict:
    manifest = load_manifest(export)
    family = get_family(manifest.family)
    from runtimes.backends import load_reference

    ref = load_reference(manifest)
    runners = Runners("onnxruntime", manifest)
    ms = {}
    for name in ("face_encoder", "transformer"):
        record = manifest.component(name)
        feeds = family.component(name).sample_inputs(ref, record.point("opt"))
        ms[name] = _median_ms(runners[name], feeds, iterations)
    runners.close()
    face, dit = ms["face_encoder"], ms["transformer"]
    return {
        "face_encoder_ms": face,
        "transformer_ms": dit,
        "share_every_step": face / (face + dit),
        f"share_once_per_segment_{steps}_steps": face / (face + steps * dit),
        "face_frames": manifest.component("face_encoder").point("opt")["face_frames"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=3)
    args = parser.parse_args()
    report = {"vae_decode": vae_memory(args.export)}
    first, last = report["vae_decode"][0], report["vae_decode"][-1]
    report["vae_rss_ratio_81_over_17"] = last["peak_rss_mb"] / first["peak_rss_mb"]
    manifest = load_manifest(args.export)
    if {"face_encoder", "transformer"} <= set(manifest.components):
        report["face_encoder"] = face_share(args.export, args.steps, args.iterations)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
