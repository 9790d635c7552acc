"""LoRAs (motion LoRAs included) fused into an AnimateDiff / Stable Diffusion pipeline before export.

The weights are loaded, weighted and fused by diffusers itself, as its AnimateDiff docs do::

    pipe.load_lora_weights(path, adapter_name=name)     # once per LoRA
    pipe.set_adapters(names, adapter_weights=scales)
    pipe.fuse_lora(...); pipe.unload_lora_weights()

so the exported graph holds plain weights and no peft layers. What this module adds is a check of
every file against the pipeline *before* anything is loaded, because diffusers is lenient there:
a LoRA whose keys lack the ``unet.`` / ``text_encoder.`` prefix (an original AnimateDiff motion
LoRA, a LoRA of another pipeline) loads as a no-op with only a logged warning, and a LoRA of which
only some keys name a module of the model is loaded partially, again with only a warning. Keys that
name no module at all, or modules of another size, do raise there, but as peft / torch errors
that name neither the file nor the model.

Key formats are the ones ``StableDiffusionLoraLoaderMixin`` reads, mapped to module names with
diffusers' own converters: peft (``unet.<module>.lora_A.weight`` / ``lora_B.weight``), older
diffusers (``unet.<module>.lora.down.weight`` / ``lora.up.weight``, ``<attn>.processor.to_q_lora.down``,
``text_encoder.<module>.lora_linear_layer.down``), and kohya keys (``lora_unet_...``, ``lora_te_...``)
after diffusers' ``lora_state_dict`` has renamed them. Text-encoder keys with the pre-transformers-5
``text_model.`` prefix are accepted, as diffusers accepts them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.errors import CheckpointError, InputError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes
LFS_POINTER_PREFIX = b"version https://git-lfs.github.com/spec"
ADAPTER_PREFIX = "zoo_lora_"


@dataclass(frozen=True)
class LoraSpec:
    """One ``--lora PATH[:SCALE]``: a LoRA file (or a folder holding one) and its weight."""

    path: Path
    scale: float = 1.0


def parse_lora(text: str) -> LoraSpec:
    """``PATH[:SCALE]`` -> :class:`LoraSpec`. Only a trailing ``:<number>`` is a scale (paths may hold ':')."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and not tail.strip():
        raise InputError(f"--lora {text!r} ends with ':' but no scale; expected PATH[:SCALE]")
    if sep:
        try:
            path, scale = head, float(tail)
        except ValueError:  # not a number: the ':' belongs to the path
            pass
    if not math.isfinite(scale):
        raise InputError(f"--lora {text!r} has scale {tail!r}; a scale must be a finite number")
    if not path.strip():
        raise InputError(f"--lora {text!r} has no path; expected PATH[:SCALE]")
    return LoraSpec(Path(path), scale)


def lora_file(spec: LoraSpec) -> Path:
    """The ``.safetensors`` file of ``spec``: the path itself, or the one LoRA file of a folder.

    In a folder, diffusers' ``pytorch_lora_weights.safetensors`` is preferred when there are several.
    Raises :class:`CheckpointError` for a missing path, a folder with no or several candidates, a file
    that is not safetensors, empty, a git-LFS pointer, truncated or unreadable.
    """
    path = Path(spec.path)
    expected = "expected a .safetensors LoRA file or a folder holding one"
    if not path.exists():
        raise CheckpointError(f"LoRA {path} does not exist; {expected}")
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(".safetensors"))
        if not found:
            what = "is empty" if not any(path.iterdir()) else "holds no .safetensors file"
            raise CheckpointError(f"LoRA folder {path} {what}; {expected}")
        preferred = [p for p in found if p.name == LORA_WEIGHT_NAME]
        if len(found) > 1 and not preferred:
            names = ", ".join(p.name for p in found)
            raise CheckpointError(
                f"LoRA folder {path} holds several .safetensors files ({names}); pass the file itself"
            )
        path = (preferred or found)[0]
    if not path.name.endswith(".safetensors"):
        raise CheckpointError(f"LoRA {path} is not a .safetensors file (pickled weights are not loaded); {expected}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"LoRA file {path} is empty")
    with open(path, "rb") as f:
        if f.read(len(LFS_POINTER_PREFIX)) == LFS_POINTER_PREFIX:
            raise CheckpointError(f"LoRA file {path} is a git-LFS pointer, not the weights; run `git lfs pull`")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"LoRA file {path} is not a readable safetensors file (truncated?): {e}") from None
    if not keys:
        raise CheckpointError(f"LoRA file {path} holds no tensors")
    return path


def fuse_loras(pipe: Any, loras: Sequence[LoraSpec]) -> None:
    """Fuse ``loras`` (each at its scale) into ``pipe``'s unet / text encoder weights, leaving no peft layers.

    Every file is checked against the pipeline before any is loaded (:class:`CheckpointError` for a
    LoRA of another model); the fused result equals the unfused pipeline after
    ``set_adapters(names, adapter_weights=[spec.scale ...])``.
    """
    if not loras:
        return
    files = [lora_file(spec) for spec in loras]
    for file in files:
        check_lora(pipe, file)
    names = [f"{ADAPTER_PREFIX}{i}" for i in range(len(files))]
    try:
        for file, name in zip(files, names):
            pipe.load_lora_weights(str(file), adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[float(spec.scale) for spec in loras])
        pipe.fuse_lora(components=sorted(pipe.get_list_adapters()), adapter_names=names)
    except (ValueError, RuntimeError, KeyError, OSError) as e:
        pipe.unload_lora_weights()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"could not fuse LoRA(s) {', '.join(map(str, files))}: {first}") from None
    pipe.unload_lora_weights()
    left = [f"{c}.{n}" for c, model in _components(pipe).items() for n, _ in model.named_modules() if "lora_" in n]
    if left:
        raise AssertionError(f"LoRA layers remain after fusing: {', '.join(left[:5])}")


def check_lora(pipe: Any, file: Path) -> None:
    """Raise :class:`CheckpointError` unless every key of ``file`` names a module of ``pipe`` with its shape."""
    components = _components(pipe)
    try:
        state_dict, _ = type(pipe).lora_state_dict(str(file))
    except (ValueError, RuntimeError, KeyError, OSError) as e:
        raise CheckpointError(f"could not read LoRA {file}: {e}") from None
    matched, unmatched = 0, []
    for component, keys in _module_keys(state_dict, components).items():
        model = components.get(component)
        modules = dict(model.named_modules()) if model is not None else {}
        for key, (original, tensor) in keys.items():
            module = modules.get(key.rsplit(".lora_", 1)[0]) if ".lora_" in key else None
            weight = getattr(module, "weight", None)
            if not isinstance(weight, torch.Tensor):
                unmatched.append(original)
                continue
            matched += 1
            kind = key.rsplit(".lora_", 1)[1]  # A.weight: (rank, in, *kernel); B.weight: (out, rank, ...)
            if (kind == "A.weight" and tensor.shape[1:] != weight.shape[1:]) or (
                kind == "B.weight" and tensor.shape[:1] != weight.shape[:1]
            ):
                raise CheckpointError(
                    f"LoRA {file} is for another base model: its key {original!r} has shape {list(tensor.shape)} "
                    f"but this model's {component}.{key.rsplit('.lora_', 1)[0]} has weight shape {list(weight.shape)}"
                )
    if unmatched and not matched:
        raise CheckpointError(
            f"LoRA {file} does not match this model: none of its {len(unmatched)} keys names a module of the "
            f"pipeline's {' or '.join(components)} (e.g. {unmatched[0]!r}); expected diffusers-format keys "
            f"such as 'unet.<module>.lora_A.weight'"
        )
    if unmatched:
        raise CheckpointError(
            f"LoRA {file} does not match this model: {len(unmatched)} of its {len(unmatched) + matched} keys "
            f"name no module of the pipeline (e.g. {unmatched[0]!r})"
        )


def _components(pipe: Any) -> dict[str, torch.nn.Module]:
    names = getattr(pipe, "_lora_loadable_modules", ("unet", "text_encoder"))
    return {n: m for n in names if isinstance(m := getattr(pipe, n, None), torch.nn.Module)}


def _module_keys(
    state_dict: Mapping[str, torch.Tensor], components: Mapping[str, torch.nn.Module]
) -> dict[str, dict[str, tuple[str, torch.Tensor]]]:
    """``{component: {peft key: (key in the file, tensor)}}``, keys renamed as diffusers renames them on load.

    Keys of no component land under ``""``. The converters only rename keys, so each value carries
    its original key along for the error messages.
    """
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    out: dict[str, dict[str, tuple[str, torch.Tensor]]] = {"": {}}
    for key, tensor in state_dict.items():
        component, dot, rest = key.partition(".")
        if dot and component in components:
            out.setdefault(component, {})[rest] = (key, tensor)
        else:
            out[""][key] = (key, tensor)
    unet = out.get("unet")
    if unet and "lora_A" not in next(iter(unet)):  # as UNet2DConditionModel.load_lora_adapter
        out["unet"] = convert_unet_state_dict_to_peft(unet)
    if out.get("text_encoder"):  # as diffusers' _load_lora_into_text_encoder
        try:
            keys = convert_state_dict_to_peft(convert_state_dict_to_diffusers(out["text_encoder"]))
        except ValueError:  # a format diffusers cannot read: the keys stay as they are and match nothing
            keys = out["text_encoder"]
        if not hasattr(components["text_encoder"], "text_model"):  # flattened CLIPTextModel (transformers 5)
            keys = {k.removeprefix("text_model."): v for k, v in keys.items()}
        out["text_encoder"] = keys
    return out


def build_random_motion_lora(
    unet: torch.nn.Module, dest: Path, *, rank: int = 2, seed: int = 0, targets: Sequence[str] = ("to_q", "to_v")
) -> Path:
    """Write a random motion LoRA (diffusers format) for the motion modules of ``unet``; returns the file.

    Only the ``targets`` linears of ``motion_modules`` are adapted, as in the published motion LoRAs;
    ``lora_B`` is non-zero, so the LoRA changes the outputs. ``dest`` is a folder (the file is then
    ``pytorch_lora_weights.safetensors``) or a ``.safetensors`` path. ``unet`` is not modified.
    """
    from diffusers import AnimateDiffPipeline

    gen = torch.Generator().manual_seed(seed)
    layers: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if "motion_modules." in name and name.rsplit(".", 1)[-1] in targets and isinstance(module, torch.nn.Linear):
            out_features, in_features = module.weight.shape
            down = torch.randn(rank, in_features, generator=gen) / math.sqrt(in_features)
            up = torch.randn(out_features, rank, generator=gen) / math.sqrt(rank)
            layers[f"{name}.lora_A.weight"] = down.to(module.weight.dtype)
            layers[f"{name}.lora_B.weight"] = up.to(module.weight.dtype)
    if not layers:
        raise CheckpointError(
            f"{type(unet).__name__} has no motion-module layers named {', '.join(targets)}; expected a UNetMotionModel"
        )
    dest = Path(dest)
    folder, weight_name = (dest.parent, dest.name) if dest.suffix == ".safetensors" else (dest, LORA_WEIGHT_NAME)
    modules = sorted(k.removesuffix(".lora_A.weight") for k in layers if k.endswith(".lora_A.weight"))
    AnimateDiffPipeline.save_lora_weights(
        folder,
        unet_lora_layers=layers,
        weight_name=weight_name,
        unet_lora_adapter_metadata={"r": rank, "lora_alpha": rank, "target_modules": modules},
    )
    return folder / weight_name
