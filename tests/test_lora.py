"""Motion LoRAs fused into a tiny AnimateDiff pipeline: parity with diffusers' unfused adapters, and refusals."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from safetensors.torch import load_file, save_file  # noqa: E402

from zoo.errors import CheckpointError, InputError  # noqa: E402
from zoo.infra.lora import LoraSpec, build_random_motion_lora, fuse_loras, lora_file, parse_lora  # noqa: E402

FRAMES = 3


def tiny_unet(channels: tuple[int, int] = (8, 16)):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16,
        norm_num_groups=4,
        sample_size=8,
        attention_head_dim=4,
    )
    adapter = MotionAdapter(
        block_out_channels=channels,
        motion_layers_per_block=1,
        motion_norm_num_groups=4,
        motion_num_attention_heads=2,
        motion_max_seq_length=32,
    )
    return unet, adapter, UNetMotionModel


@pytest.fixture(scope="module")
def base_pipe():
    """AnimateDiffPipeline (the real class) over tiny random models; no tokenizer is needed to fuse LoRAs."""
    from diffusers import AnimateDiffPipeline, AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    unet, adapter, _ = tiny_unet()
    vae = AutoencoderKL(
        block_out_channels=(8,),
        norm_num_groups=4,
        latent_channels=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )
    pipe = AnimateDiffPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=None, unet=unet, motion_adapter=adapter, scheduler=DDIMScheduler()
    )
    assert type(pipe.unet).__name__ == "UNetMotionModel"
    return pipe


@pytest.fixture
def pipe(base_pipe):
    return copy.deepcopy(base_pipe)


@pytest.fixture(scope="module")
def motion_loras(base_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("loras")
    return [build_random_motion_lora(base_pipe.unet, root / f"m{seed}", seed=seed, rank=2 + seed) for seed in (0, 1)]


def unet_out(pipe) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    sample = torch.randn(1, 4, FRAMES, 8, 8, generator=gen)
    text = torch.randn(FRAMES, 5, 16, generator=gen)  # the pipeline repeats prompt embeds per frame
    with torch.no_grad():
        return pipe.unet(sample, torch.tensor([10]), encoder_hidden_states=text).sample


def text_out(pipe) -> torch.Tensor:
    with torch.no_grad():
        return pipe.text_encoder(torch.tensor([[0, 5, 9, 1]])).last_hidden_state


def unfused(pipe, files: list[Path], weights: list[float]):
    """diffusers' own path: adapters loaded and weighted, not fused."""
    names = [f"a{i}" for i in range(len(files))]
    for f, name in zip(files, names):
        pipe.load_lora_weights(str(f), adapter_name=name)
    pipe.set_adapters(names, adapter_weights=weights)
    return pipe


def assert_no_peft(pipe) -> None:
    for model in (pipe.unet, pipe.text_encoder):
        assert not [n for n, _ in model.named_modules() if "lora_" in n]
        assert not getattr(model, "peft_config", None)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------
# Fusion parity
# --------------------------------------------------------------------------------------


def test_random_motion_lora_is_diffusers_format_on_motion_modules_only(motion_loras):
    state = load_file(motion_loras[0])
    assert motion_loras[0].name == "pytorch_lora_weights.safetensors"
    assert state and all(k.startswith("unet.") and ".motion_modules." in k for k in state)
    assert {k.rsplit(".", 3)[-3] for k in state} == {"to_q", "to_v"}
    assert all(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


def test_fused_equals_unfused_and_differs_from_base(base_pipe, pipe, motion_loras):
    base = unet_out(base_pipe)
    expected = unet_out(unfused(copy.deepcopy(base_pipe), motion_loras[:1], [0.7]))
    fuse_loras(pipe, [LoraSpec(motion_loras[0], 0.7)])
    got = unet_out(pipe)
    assert close(got, expected)
    assert not close(got, base)
    assert_no_peft(pipe)


def test_two_loras_equal_set_adapters_weights(base_pipe, pipe, motion_loras):
    expected = unet_out(unfused(copy.deepcopy(base_pipe), motion_loras, [0.5, 1.0]))
    fuse_loras(pipe, [LoraSpec(motion_loras[0], 0.5), LoraSpec(motion_loras[1].parent, 1.0)])  # a folder works too
    assert close(unet_out(pipe), expected)
    one = copy.deepcopy(base_pipe)
    fuse_loras(one, [LoraSpec(motion_loras[1], 1.0)])
    assert not close(unet_out(pipe), unet_out(one))
    assert_no_peft(pipe)


def test_scale_zero_is_the_base_model(base_pipe, pipe, motion_loras):
    fuse_loras(pipe, [LoraSpec(motion_loras[0], 0.0)])
    assert close(unet_out(pipe), unet_out(base_pipe))
    assert_no_peft(pipe)


def test_no_loras_is_a_no_op(base_pipe, pipe):
    fuse_loras(pipe, [])
    assert torch.equal(unet_out(pipe), unet_out(base_pipe))


def test_text_encoder_keys_are_fused_into_the_text_encoder(base_pipe, pipe, motion_loras, tmp_path):
    from diffusers import AnimateDiffPipeline

    gen = torch.Generator().manual_seed(3)
    text_layers = {}
    for proj in ("q_proj", "v_proj"):  # the pre-transformers-5 CLIP names, as published LoRAs have them
        text_layers[f"text_model.encoder.layers.0.self_attn.{proj}.lora_A.weight"] = torch.randn(2, 16, generator=gen)
        text_layers[f"text_model.encoder.layers.0.self_attn.{proj}.lora_B.weight"] = torch.randn(16, 2, generator=gen)
    unet_layers = {k.removeprefix("unet."): v for k, v in load_file(motion_loras[0]).items()}
    AnimateDiffPipeline.save_lora_weights(tmp_path, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers)
    file = tmp_path / "pytorch_lora_weights.safetensors"

    reference = unfused(copy.deepcopy(base_pipe), [file], [0.8])
    fuse_loras(pipe, [LoraSpec(file, 0.8)])
    assert close(text_out(pipe), text_out(reference))
    assert not close(text_out(pipe), text_out(base_pipe))
    assert close(unet_out(pipe), unet_out(reference))
    assert_no_peft(pipe)


@pytest.mark.parametrize(
    "down, up",
    [
        (".lora.down.weight", ".lora.up.weight"),  # older diffusers format
        ("<proc>_lora.down.weight", "<proc>_lora.up.weight"),  # AnimateDiff motion LoRAs as converted by diffusers
    ],
)
def test_older_key_formats_fuse_like_the_peft_format(base_pipe, pipe, motion_loras, tmp_path, down, up):
    renamed = {}
    for key, value in load_file(motion_loras[0]).items():
        module, _, kind = key.rpartition(".lora_")
        if "<proc>" in down:  # unet.<attn>.to_q.lora_A.weight -> unet.<attn>.processor.to_q_lora.down.weight
            attn, _, proj = module.rpartition(".")
            module = f"{attn}.processor.{proj}"
        suffix = down if kind.startswith("A") else up
        renamed[module + suffix.replace("<proc>", "")] = value
    file = tmp_path / "old.safetensors"
    save_file(renamed, file)
    expected = copy.deepcopy(base_pipe)
    fuse_loras(expected, [LoraSpec(motion_loras[0], 0.6)])
    fuse_loras(pipe, [LoraSpec(file, 0.6)])
    assert close(unet_out(pipe), unet_out(expected))
    assert not close(unet_out(pipe), unet_out(base_pipe))


# --------------------------------------------------------------------------------------
# LoRAs of another model
# --------------------------------------------------------------------------------------


def test_keys_without_the_unet_prefix_match_nothing(pipe, motion_loras, tmp_path):
    # the original AnimateDiff layout: diffusers would load nothing and only log a warning
    state = {k.removeprefix("unet."): v for k, v in load_file(motion_loras[0]).items()}
    save_file(state, tmp_path / "raw.safetensors")
    with pytest.raises(CheckpointError, match=r"raw\.safetensors does not match this model.*'down_blocks\.0\."):
        fuse_loras(pipe, [LoraSpec(tmp_path / "raw.safetensors")])
    assert_no_peft(pipe)


def test_modules_of_another_model_match_nothing(pipe, tmp_path):
    key = "unet.down_blocks.2.attentions.1.transformer_blocks.0.attn2.to_k"  # a block this tiny model lacks
    state = {f"{key}.lora_A.weight": torch.ones(2, 8), f"{key}.lora_B.weight": torch.ones(8, 2)}
    save_file(state, tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match=r"x\.safetensors does not match this model.*down_blocks\.2\.attentions"):
        fuse_loras(pipe, [LoraSpec(tmp_path / "x.safetensors")])


def test_partly_matching_lora_is_refused(pipe, motion_loras, tmp_path):
    state = load_file(motion_loras[0])
    state["unet.mid_block.motion_modules.7.transformer_blocks.0.attn1.to_q.lora_A.weight"] = torch.ones(2, 16)
    save_file(state, tmp_path / "part.safetensors")
    with pytest.raises(CheckpointError, match=r"1 of its \d+ keys name no module.*motion_modules\.7"):
        fuse_loras(pipe, [LoraSpec(tmp_path / "part.safetensors")])


def test_full_weights_are_not_a_lora(pipe, tmp_path):
    save_file({"unet.conv_in.weight": torch.ones(8, 4, 3, 3)}, tmp_path / "full.safetensors")
    with pytest.raises(CheckpointError, match=r"does not match this model.*'unet\.conv_in\.weight'"):
        fuse_loras(pipe, [LoraSpec(tmp_path / "full.safetensors")])


def test_lora_of_a_bigger_motion_module_names_key_and_shapes(pipe, tmp_path):
    unet, adapter, motion_cls = tiny_unet((16, 32))
    big = build_random_motion_lora(motion_cls.from_unet2d(unet, adapter), tmp_path / "big.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"big\.safetensors is for another base model: its key "
        r"'unet\.down_blocks\.0\.motion_modules\.0\..*to_q\.lora_A\.weight' has shape \[2, 16\] "
        r"but this model's unet\.down_blocks\.0\..*to_q has weight shape \[8, 8\]",
    ):
        fuse_loras(pipe, [LoraSpec(big)])
    assert_no_peft(pipe)


def test_text_encoder_of_another_size_is_refused(pipe, tmp_path):
    key = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    state = {f"{key}.lora_A.weight": torch.ones(4, 768), f"{key}.lora_B.weight": torch.ones(768, 4)}
    save_file(state, tmp_path / "te.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"key 'text_encoder\.text_model\..*q_proj\.lora_A\.weight' has shape "
        r"\[4, 768\] but this model's text_encoder\.encoder\.layers\.0\.self_attn\.q_proj has weight "
        r"shape \[16, 16\]",
    ):
        fuse_loras(pipe, [LoraSpec(tmp_path / "te.safetensors")])


def test_all_files_are_checked_before_any_is_loaded(base_pipe, pipe, motion_loras, tmp_path):
    save_file({"unet.nothing.lora_A.weight": torch.ones(2, 8)}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        fuse_loras(pipe, [LoraSpec(motion_loras[0]), LoraSpec(tmp_path / "bad.safetensors")])
    assert_no_peft(pipe)
    assert torch.equal(unet_out(pipe), unet_out(base_pipe))


def test_build_random_motion_lora_needs_motion_modules(base_pipe, tmp_path):
    unet, _, _ = tiny_unet()
    with pytest.raises(CheckpointError, match="no motion-module layers"):
        build_random_motion_lora(unet, tmp_path)


# --------------------------------------------------------------------------------------
# Files and folders
# --------------------------------------------------------------------------------------


def test_lora_file_picks_the_file_of_a_folder(tmp_path):
    save_file({"unet.a.lora_A.weight": torch.ones(1)}, tmp_path / "only.safetensors")
    assert lora_file(LoraSpec(tmp_path)) == tmp_path / "only.safetensors"
    save_file({"unet.a.lora_A.weight": torch.ones(1)}, tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match=r"several \.safetensors files \(only\.safetensors, other\.safetensors\)"):
        lora_file(LoraSpec(tmp_path))
    save_file({"unet.a.lora_A.weight": torch.ones(1)}, tmp_path / "pytorch_lora_weights.safetensors")
    assert lora_file(LoraSpec(tmp_path)) == tmp_path / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.safetensors", None, "does not exist"),
        ("empty-folder", "DIR", "is empty"),
        ("lora.ckpt", b"\x80\x04pickle", r"is not a \.safetensors file"),
        ("zero.safetensors", b"", "is empty"),
        (
            "lfs.safetensors",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 123\n",
            "git-LFS pointer",
        ),
        ("garbage.safetensors", b"not a safetensors file at all", "not a readable safetensors file"),
        ("truncated.safetensors", "TRUNC", "not a readable safetensors file"),
        ("no-tensors.safetensors", "EMPTY", "holds no tensors"),
    ],
)
def test_lora_file_refusals(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content == "TRUNC":
        save_file({"a.lora_A.weight": torch.ones(64, 64)}, path)
        path.write_bytes(path.read_bytes()[:2000])
    elif content == "EMPTY":
        save_file({}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as err:
        lora_file(LoraSpec(path))
    assert name in str(err.value)


def test_folder_without_safetensors(tmp_path):
    (tmp_path / "pytorch_lora_weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"holds no \.safetensors file"):
        lora_file(LoraSpec(tmp_path))


# --------------------------------------------------------------------------------------
# --lora PATH[:SCALE]
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, path, scale",
    [
        ("a.safetensors", "a.safetensors", 1.0),
        ("a.safetensors:0.8", "a.safetensors", 0.8),
        ("/x:y/a.safetensors:1", "/x:y/a.safetensors", 1.0),
        ("/x:y/a.safetensors", "/x:y/a.safetensors", 1.0),
        ("loras/zoom:-0.5", "loras/zoom", -0.5),
        ("C:\\loras\\zoom.safetensors", "C:\\loras\\zoom.safetensors", 1.0),
    ],
)
def test_parse_lora(text, path, scale):
    assert parse_lora(text) == LoraSpec(Path(path), scale)


@pytest.mark.parametrize(
    "text, message",
    [
        ("a:nan", "finite"),
        ("a:inf", "finite"),
        ("a:-1e999", "finite"),
        ("a.safetensors:", "no scale"),
        (":0.5", "no path"),
        ("", "no path"),
    ],
)
def test_parse_lora_refusals(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_lora(text)
    assert str(err.value).startswith("--lora")
