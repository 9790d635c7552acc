"""Weightless export of full-size checkpoints on this machine: wall time, peak RSS, export size,
depth scaling, the initializer check, and parity at real width.

Each target writes random weights at the real config in the real layout (a diffusers family
folder whose module subfolder holds the full-size config and sharded safetensors in the
checkpoint's dtype), then runs `zoo export --weightless` on that one component in a child
process under /usr/bin/time. Checkpoints are written one target at a time and removed after, so
the disk holds at most one (the 17B Wan-Animate transformer is 34.5 GB in bf16).

The random values are a block of randn * 0.02 in the stored dtype, repeated from a random
start per tensor: real bytes on disk at the real size, written at disk speed.

    python scripts/bench_weightless.py --work /tmp/zoo-bench [--only wan-animate-14b ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from exporters.weights import DATA_FILE, WEIGHTS_DIR, dtype_name  # noqa: E402
from zoo.infra.checkpoint import RANDOM_MARKER, empty_module  # noqa: E402
from zoo.registry import get_family  # noqa: E402

SAFETENSORS_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
SHARD_BYTES = 5 << 30  # shard size of the published checkpoints


@dataclass
class Target:
    name: str
    family: str
    variant: str | None
    component: str
    subfolder: str
    library: str
    cls: str
    config: dict[str, Any]
    dtype: torch.dtype
    envelope: list[str]  # zoo export options that keep the parity shapes small
    depth_key: str  # config key of the block count
    half_depth: bool = False  # also export at half depth (RSS must not grow with depth)
    parity_depth: int | None = None  # parity at full width with this many blocks (None: at full depth)
    parity_config: dict[str, Any] = field(default_factory=dict)  # more config changes for that reduced depth
    parity_precisions: tuple[str, ...] = ("fp32",)
    extra: dict[str, Any] = field(default_factory=dict)


def _motion_unet_config() -> dict[str, Any]:
    """UNetMotionModel of Stable Diffusion 1.5 + the v1-5-2 motion adapter, as from_unet2d builds it."""
    from accelerate import init_empty_weights
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    with init_empty_weights(include_buffers=True):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD 1.5 (the rest are its defaults)
        adapter = MotionAdapter(motion_max_seq_length=32, use_motion_mid_block=True)  # v1-5-2
        return dict(UNetMotionModel.from_unet2d(unet, adapter).config)


TARGETS = [
    Target(
        "wan-animate-14b",
        "wan-animate",
        None,
        "transformer",
        "transformer",
        "diffusers",
        "WanAnimateTransformer3DModel",
        {"added_kv_proj_dim": 5120},
        torch.bfloat16,
        ["--height", "32:32:48", "--width", "32:32:48", "--segment-frames", "5:5:9"],
        "num_layers",
        half_depth=True,
        parity_depth=2,
        parity_config={"inject_face_latents_blocks": 2},  # a face adapter too
        parity_precisions=("fp32", "bf16"),
    ),
    Target(
        "umt5-xxl",
        "wan-animate",
        None,
        "text_encoder",
        "text_encoder",
        "transformers",
        "UMT5EncoderModel",
        {
            "d_model": 4096,
            "d_ff": 10240,
            "d_kv": 64,
            "num_heads": 64,
            "num_layers": 24,
            "vocab_size": 256384,
            "feed_forward_proj": "gated-gelu",
            "relative_attention_num_buckets": 32,
            "tie_word_embeddings": False,
        },
        torch.bfloat16,
        ["--height", "32:32:48", "--width", "32:32:48", "--segment-frames", "5:5:9"],
        "num_layers",
        half_depth=True,
        parity_depth=2,
    ),
    Target(
        "t5-xxl",
        "pixart",
        "sigma",
        "text_encoder",
        "text_encoder",
        "transformers",
        "T5EncoderModel",
        {
            "d_model": 4096,
            "d_ff": 10240,
            "d_kv": 64,
            "num_heads": 64,
            "num_layers": 24,
            "vocab_size": 32128,
            "feed_forward_proj": "gated-gelu",
            "relative_attention_num_buckets": 32,
        },
        torch.float32,
        ["--height", "64:64:128", "--width", "64:64:128", "--text-length", "8:16:32"],
        "num_layers",
        parity_depth=2,
    ),
    Target(
        "clip-vit-h",
        "wan-animate",
        None,
        "image_encoder",
        "image_encoder",
        "transformers",
        "CLIPVisionModelWithProjection",
        {
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 16,
            "patch_size": 14,
            "image_size": 224,
            "projection_dim": 1024,
            "hidden_act": "gelu",
        },
        torch.float32,
        ["--height", "32:32:48", "--width", "32:32:48", "--segment-frames", "5:5:9"],
        "num_hidden_layers",
    ),
    Target(
        "animatediff-motion-unet",
        "animatediff",
        None,
        "unet",
        "unet",
        "diffusers",
        "UNetMotionModel",
        {},
        torch.float32,
        ["--height", "64:64:128", "--width", "64:64:128", "--frames", "2:4:8"],
        "layers_per_block",
        extra={"config_factory": _motion_unet_config},
    ),
    Target(
        "pixart-sigma-xl",
        "pixart",
        "sigma",
        "transformer",
        "transformer",
        "diffusers",
        "PixArtTransformer2DModel",
        {
            "num_layers": 28,
            "sample_size": 128,
            "caption_channels": 4096,
            "use_additional_conditions": False,
            "interpolation_scale": 2,
            "out_channels": 8,
            "cross_attention_dim": 1152,
        },
        torch.float32,
        ["--height", "64:64:128", "--width", "64:64:128", "--text-length", "8:16:32"],
        "num_layers",
        parity_precisions=("fp32", "fp16"),
    ),
]


# --------------------------------------------------------------------------------------
# Writing a checkpoint folder without holding it in memory
# --------------------------------------------------------------------------------------


def module_class(target: Target) -> Any:
    import importlib

    return getattr(importlib.import_module(target.library), target.cls)


def config_of(target: Target, depth: int | None, extra: dict[str, Any] | None = None) -> Any:
    cls = module_class(target)
    if "config_factory" in target.extra:
        values = target.extra["config_factory"]()
    else:
        values = dict(target.config)
    if depth is not None:
        values[target.depth_key] = depth
    values.update(extra or {})
    if target.library == "diffusers":
        return {k: v for k, v in values.items() if not k.startswith("_")}
    return cls.config_class(**values)


def write_config(target: Target, config: Any, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if target.library == "diffusers":
        cls = module_class(target)
        data = dict(config) | {"_class_name": cls.__name__, "_diffusers_version": "0.36.0"}
        (folder / "config.json").write_text(json.dumps(data, indent=2, default=list))
    else:
        config.save_pretrained(folder)


def write_random(target: Target, config: Any, folder: Path, seed: int = 0) -> tuple[int, int]:
    """Sharded safetensors of random values for the module built from ``config`` on the meta
    device, in the target's dtype; returns (parameters, bytes)."""
    module = empty_module(module_class(target), config)
    tensors: dict[str, torch.Tensor] = dict(module.named_parameters())  # tied weights once
    persistent = module.state_dict(keep_vars=True)
    tensors |= {k: v for k, v in module.named_buffers() if k in persistent and k not in tensors}
    gen = torch.Generator().manual_seed(seed)
    block = (torch.randn(1 << 23, generator=gen) * 0.02).to(target.dtype).view(torch.uint8).numpy().tobytes()
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * target.dtype.itemsize
        if size + n > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((key, t))
        size += n
    stem = "diffusion_pytorch_model" if target.library == "diffusers" else "model"
    weight_map, total, params = {}, 0, 0
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {}, 0
        for key, t in shard:
            n = t.numel() * target.dtype.itemsize
            dtype = target.dtype if t.is_floating_point() else t.dtype
            header[key] = {
                "dtype": SAFETENSORS_NAMES[dtype],
                "shape": list(t.shape),
                "data_offsets": [offset, offset + n],
            }
            offset += n
            weight_map[key] = name
            params += t.numel()
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for _key, t in shard:
                left = t.numel() * target.dtype.itemsize
                start = int(torch.randint(0, len(block) // 2, (1,), generator=gen)) & ~7
                while left:
                    piece = block[start : start + left]
                    f.write(piece)
                    left -= len(piece)
                    start = 0
        total += (folder / name).stat().st_size
    (folder / f"{stem}.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    )
    return params, total


def family_folder(
    target: Target, work: Path, depth: int | None, shards_from: Path | None = None, extra: dict[str, Any] | None = None
) -> tuple[Path, int, int]:
    """A tiny random family folder whose ``target.subfolder`` is the full-size module (random
    shards, or hard links to ``shards_from``'s shards for another depth of the same weights)."""
    folder = work / f"{target.name}-{depth or 'full'}"
    shutil.rmtree(folder, ignore_errors=True)
    get_family(target.family).build_random(folder, variant=target.variant, preset="tiny")
    (folder / RANDOM_MARKER).unlink()  # real-width tolerances: "full" rows, not "tiny"
    sub = folder / target.subfolder
    shutil.rmtree(sub)
    config = config_of(target, depth, extra)
    write_config(target, config, sub)
    if shards_from is not None:
        for f in (shards_from / target.subfolder).glob("*safetensors*"):
            os.link(f, sub / f.name) if f.suffix == ".safetensors" else shutil.copy(f, sub / f.name)
        return folder, 0, sum(f.stat().st_size for f in sub.glob("*.safetensors"))
    params, size = write_random(target, config, sub)
    return folder, params, size


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


def timed(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd`` under /usr/bin/time: wall seconds, peak RSS (GiB), exit code."""
    t = time.time()
    with open(log, "w") as f:
        proc = subprocess.run(["/usr/bin/time", "-f", "ZOO_TIME %e %M", *cmd], stdout=f, stderr=subprocess.STDOUT)
    line = [x for x in log.read_text().splitlines() if x.startswith("ZOO_TIME")][-1].split()
    return {
        "rc": proc.returncode,
        "wall_s": round(float(line[1]), 1),
        "peak_rss_gib": round(int(line[2]) / 2**20, 3),
        "elapsed_s": round(time.time() - t, 1),
        "log": str(log),
    }


def export_size(out: Path, component: str) -> dict[str, int]:
    folder = out / component
    own = sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and WEIGHTS_DIR not in p.relative_to(folder).parts
    )
    linked = sum(p.stat().st_size for p in (folder / WEIGHTS_DIR).glob("*")) if (folder / WEIGHTS_DIR).is_dir() else 0
    data = (folder / DATA_FILE).stat().st_size if (folder / DATA_FILE).is_file() else 0
    return {"own_bytes": own, "computed_data_bytes": data, "linked_bytes": linked}


def zoo_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "zoo.cli", *args]


def run_target(target: Target, work: Path, parity: bool, export: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {
        "target": target.name,
        "family": target.family,
        "component": target.component,
        "dtype": dtype_name(target.dtype),
    }
    if not export:
        return result | parity_run(target, work)
    t = time.time()
    full, params, size = family_folder(target, work, None)
    result.update(parameters=params, checkpoint_bytes=size, write_s=round(time.time() - t, 1))
    print(
        f"{target.name}: wrote {params / 1e9:.2f}B parameters, {size / 2**30:.1f} GiB in {result['write_s']} s",
        flush=True,
    )
    common = ["--component", target.component, "--weightless", *target.envelope]
    out = work / f"{target.name}-export"
    shutil.rmtree(out, ignore_errors=True)
    result["export"] = timed(
        zoo_cmd("export", target.family, "--model", str(full), "--out", str(out), *common),
        work / f"{target.name}-export.log",
    ) | export_size(out, target.component)
    print(f"  export: {result['export']}", flush=True)
    if result["export"]["rc"] == 0:  # the initializer check at full depth, as zoo parity runs it
        result["initializer_check"] = timed(
            zoo_cmd("parity", str(out), "--weights-only"), work / f"{target.name}-check.log"
        )
        result["initializer_check"]["report"] = [
            x
            for x in Path(work / f"{target.name}-check.log").read_text().splitlines()
            if "initializers" in x or "passed" in x or "error" in x
        ]
        print(f"  initializer check: {result['initializer_check']}", flush=True)
    if target.half_depth:
        depth = (
            getattr(config_of(target, None), target.depth_key, None)
            if target.library != "diffusers"
            else config_of(target, None).get(target.depth_key) or 40
        )
        half, _, _ = family_folder(target, work, depth // 2, shards_from=full)
        out_half = work / f"{target.name}-half-export"
        shutil.rmtree(out_half, ignore_errors=True)
        result["export_half_depth"] = timed(
            zoo_cmd("export", target.family, "--model", str(half), "--out", str(out_half), *common),
            work / f"{target.name}-half.log",
        ) | {"depth": depth // 2}
        print(f"  export at depth {depth // 2}: {result['export_half_depth']}", flush=True)
        shutil.rmtree(out_half, ignore_errors=True)
        shutil.rmtree(half, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(full, ignore_errors=True)
    return result | (parity_run(target, work) if parity else {})


def parity_run(target: Target, work: Path) -> dict[str, Any]:
    """``zoo parity`` at real width (at reduced depth where the fp32 weights would not fit here),
    once per precision."""
    common = ["--component", target.component, "--weightless", *target.envelope]
    if target.parity_depth is not None:
        folder, params, _ = family_folder(target, work, target.parity_depth, extra=target.parity_config)
    else:
        folder, params, _ = family_folder(target, work, None)
    results = {}
    for precision in target.parity_precisions:
        out = work / f"{target.name}-parity-{precision}"
        shutil.rmtree(out, ignore_errors=True)
        exp = timed(
            zoo_cmd(
                "export", target.family, "--model", str(folder), "--out", str(out), *common, "--precision", precision
            ),
            work / f"{target.name}-parity-export-{precision}.log",
        )
        par = (
            timed(zoo_cmd("parity", str(out), "--no-end-to-end"), work / f"{target.name}-parity-{precision}.log")
            if exp["rc"] == 0
            else exp
        )
        lines = Path(par["log"]).read_text().splitlines()
        summary = [x for x in lines if "passed" in x or x.startswith("error")][-2:]
        results[precision] = {
            "depth": target.parity_depth or "full",
            "parameters": params,
            "export": exp,
            "parity": par,
            "summary": summary,
        }
        print(f"  parity {precision}: {results[precision]}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    return {"parity": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/zoo-bench-weightless"))
    parser.add_argument("--only", nargs="*", help=f"targets: {', '.join(t.name for t in TARGETS)}")
    parser.add_argument("--no-parity", action="store_true", help="skip parity at real width")
    parser.add_argument("--parity-only", action="store_true", help="only parity at real width")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    chosen = [t for t in TARGETS if not args.only or t.name in args.only]
    unknown = set(args.only or ()) - {t.name for t in TARGETS}
    if unknown:
        parser.error(f"unknown targets {', '.join(sorted(unknown))}")
    results = []
    for target in chosen:
        results.append(run_target(target, args.work, parity=not args.no_parity, export=not args.parity_only))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
