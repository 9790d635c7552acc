"""Weightless export: graphs traced on the meta device whose initializers are the checkpoint's own
safetensors byte ranges (hard links), streamed copies, or tensors computed one at a time; the
initializer check; and the bad inputs of issue 7 (each one `error:` line, exit 2, nothing written)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_error, zoo

from exporters.manifest import load_manifest
from exporters.weights import WEIGHT_MAP, WEIGHTS_DIR, StoredWeights, checkpoint_files, read_header
from zoo.errors import ArtifactError, CheckpointError

FAMILY = "wan-animate"
PARTS = ("--component", "transformer", "--component", "face_encoder", "--component", "text_encoder")


def _shard(folder: Path, subfolder: str, cls, max_shard_size: str, dtype: torch.dtype = torch.float32) -> None:
    """Re-save ``folder/subfolder`` sharded (an index and several files), as large checkpoints come."""
    module = cls.from_pretrained(str(folder), subfolder=subfolder).to(dtype)
    shutil.rmtree(folder / subfolder)
    module.save_pretrained(folder / subfolder, max_shard_size=max_shard_size)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_checkpoint) -> Path:
    """The tiny Wan-Animate checkpoint with its transformer in several safetensors shards."""
    from diffusers import WanAnimateTransformer3DModel

    dest = tmp_path_factory.mktemp("sharded") / "checkpoint"
    shutil.copytree(tiny_checkpoint(FAMILY), dest)
    _shard(dest, "transformer", WanAnimateTransformer3DModel, "60KB")
    assert len(checkpoint_files(dest / "transformer")) >= 3
    return dest


@pytest.fixture(scope="module")
def weightless(tmp_path_factory, sharded) -> Path:
    out = tmp_path_factory.mktemp("weightless") / "export"
    result = zoo("export", FAMILY, "--model", sharded, "--weightless", *PARTS, "--out", out)
    assert result.exit_code == 0, result.output
    assert "weights linked from the checkpoint" in result.output
    return out


def _ort(export: Path, component: str, feeds: dict[str, torch.Tensor]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(export / component / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def test_initializers_are_the_checkpoint_byte_ranges(weightless, sharded):
    manifest = json.loads((weightless / "manifest.json").read_text())
    record = manifest["components"]["transformer"]
    assert record["weight_map"] == "transformer/weights.json"
    weight_map = json.loads((weightless / "transformer" / WEIGHT_MAP).read_text())
    # every linked file is the checkpoint's own file (the same inode: nothing was copied)
    assert len(weight_map["files"]) == len(checkpoint_files(sharded / "transformer"))
    for rel, info in weight_map["files"].items():
        assert os.stat(weightless / "transformer" / rel).st_ino == os.stat(info["source"]).st_ino
    stored = StoredWeights([sharded / "transformer"])
    entries = weight_map["initializers"]
    for entry in entries.values():
        if entry["how"] == "stored":
            t = stored.tensors[entry["key"]]
            assert (entry["offset"], entry["length"], tuple(entry["shape"])) == (t.offset, t.length, t.shape)
    hows = {name: e["how"] for name, e in entries.items()}
    assert hows["transformer.rope.freqs_cos"] == "buffer computed from the config"
    assert sum(h == "stored" for h in hows.values()) > 50
    # the face encoder's QR basis is declared, not guessed
    face = json.loads((weightless / "face_encoder" / WEIGHT_MAP).read_text())["initializers"]
    assert face["q_t"]["how"].startswith("transform: Q.T of the QR of motion_encoder.motion_synthesis_weight")
    # besides the graph, the export holds only the computed tensors (here the RoPE tables)
    own = (weightless / "transformer" / "model.onnx.data").stat().st_size
    assert own < sum(f.stat().st_size for f in checkpoint_files(sharded / "transformer")) / 10


def test_weightless_graph_computes_the_reference(weightless, sharded):
    """ONNX Runtime reads the hard-linked shards; outputs match the library module at the max corner."""
    from exporters.manifest import load_manifest
    from zoo.registry import get_family

    fam = get_family(FAMILY)
    ref = fam.load(sharded)
    manifest = load_manifest(weightless)
    for name in ("transformer", "face_encoder", "text_encoder"):
        component = fam.component(name)
        feeds = component.sample_inputs(ref, manifest.component(name).point("max"), seed=5)
        with torch.no_grad():
            expected = component.reference(ref, feeds)
        for got, (out, want) in zip(_ort(weightless, name, feeds), expected.items()):
            np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=1e-3, err_msg=f"{name}.{out}")


def test_parity_runs_the_initializer_check(weightless):
    result = zoo("parity", weightless, "--no-end-to-end")  # a partial export: its loops and sampler did not run
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1].startswith("passed what ran; 2 checks not run (")
    assert "initializers" in result.output and "linked" in result.output and "recomputed" in result.output


def test_initializer_check_catches_a_wrong_byte_range(weightless, tmp_path, sharded):
    from exporters.manifest import load_manifest
    from exporters.onnx import verify_weights
    from zoo.registry import get_family

    copy = tmp_path / "export"
    shutil.copytree(weightless, copy)
    fam = get_family(FAMILY)
    ref = fam.load(sharded)
    manifest = load_manifest(copy)
    counts = verify_weights(copy, manifest.component("face_encoder"), ref, fam.component("face_encoder"))
    assert counts["recomputed"] >= 2 and counts["linked"] > 10
    # a map that moves one tensor by 4 bytes no longer matches the graph
    path = copy / "transformer" / WEIGHT_MAP
    weight_map = json.loads(path.read_text())
    name = next(n for n, e in weight_map["initializers"].items() if e["how"] == "stored")
    weight_map["initializers"][name]["offset"] += 4
    path.write_text(json.dumps(weight_map))
    with pytest.raises(ArtifactError, match=f"initializer {name}: the graph reads"):
        verify_weights(copy, manifest.component("transformer"), ref, fam.component("transformer"))
    # a computed tensor whose bytes were changed is caught by its digest
    data = copy / "face_encoder" / "model.onnx.data"
    entry = json.loads((copy / "face_encoder" / WEIGHT_MAP).read_text())["initializers"]["q_t"]
    with open(data, "r+b") as f:
        f.seek(entry["offset"])
        byte = f.read(1)
        f.seek(entry["offset"])
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactError, match="initializer q_t: its bytes .* differ"):
        verify_weights(copy, manifest.component("face_encoder"), ref, fam.component("face_encoder"))


def test_copy_weights_is_self_contained(tmp_path, tiny_checkpoint, weightless):
    """--copy-weights streams the tensors into the export: it runs with the checkpoint gone."""
    from exporters.manifest import load_manifest
    from zoo.registry import get_family

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(FAMILY), ckpt)
    fam = get_family(FAMILY)
    ref = fam.load(tiny_checkpoint(FAMILY))
    feeds = fam.component("face_encoder").sample_inputs(
        ref, load_manifest(weightless).component("face_encoder").point("opt")
    )
    out = tmp_path / "copied"
    result = zoo(
        "export", FAMILY, "--model", ckpt, "--weightless", "--copy-weights", "--component", "face_encoder", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert not (out / "face_encoder" / "weights").exists()
    entries = json.loads((out / "face_encoder" / WEIGHT_MAP).read_text())["initializers"]
    assert {e["location"] for e in entries.values()} == {"model.onnx.data"}
    shutil.rmtree(ckpt)
    moved = tmp_path / "moved"
    shutil.move(out, moved)
    np.testing.assert_allclose(
        _ort(moved, "face_encoder", feeds)[0], _ort(weightless, "face_encoder", feeds)[0], atol=1e-6
    )


def test_checkpoint_stored_in_bf16_exports_zero_copy_in_bf16(tmp_path, tiny_checkpoint):
    """The default precision of a weightless component is the checkpoint's own dtype: every
    weight is linked as stored; the fp32 islands of the policy (norms, modulation) read their
    bf16 bytes through a Cast in the graph, as loading the checkpoint into fp32 modules does."""
    import onnx
    from diffusers import WanAnimateTransformer3DModel

    from exporters.precision import graph_dtypes

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(FAMILY), ckpt)
    _shard(ckpt, "transformer", WanAnimateTransformer3DModel, "10GB", torch.bfloat16)
    out = tmp_path / "export"
    result = zoo("export", FAMILY, "--model", ckpt, "--weightless", "--component", "transformer", "--out", out)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "manifest.json").read_text())["components"]["transformer"]
    assert (record["precision"], record["opset"]) == ("bfloat16", 22)  # 22: the first opset whose Conv takes bf16
    entries = json.loads((out / "transformer" / WEIGHT_MAP).read_text())["initializers"]
    stored = {e["key"]: e for e in entries.values() if e["source"] == "checkpoint"}
    computed = {n: e["how"] for n, e in entries.items() if e["source"] == "computed"}
    assert all(e["dtype"] == "bfloat16" for e in stored.values()) and len(stored) > 60
    assert set(computed.values()) == {"buffer computed from the config"}  # the RoPE tables, nothing else
    islands = [k for k in stored if ".norm" in k or k == "scale_shift_table" or "time_embedder" in k]
    assert islands and all(f"transformer.{k}" not in entries for k in islands)
    assert all(entries[f"transformer.{k}.stored_bfloat16"]["how"].startswith("stored (widened") for k in islands)
    dtypes = graph_dtypes(onnx.load(str(out / "transformer" / "model.onnx"), load_external_data=False))
    assert dtypes.count(("MatMul", "Gemm"), "bfloat16") > 10
    assert dtypes.casts[("bfloat16", "float32")] >= len(islands)
    # ONNX Runtime on CPU has no bf16 kernels: parity says so and does not pass (exit 3, not a failure)
    result = zoo("parity", out)
    assert result.exit_code == 3 and "error:" not in result.output, result.output
    assert result.output.strip().splitlines()[-1].startswith("passed what ran; ")
    assert "NOT RUN" in result.output and "initializers" in result.output


# --------------------------------------------------------------------------------------
# Bad input: one error line, exit 2, nothing written
# --------------------------------------------------------------------------------------


def _export_fails(ckpt: Path, out: Path, message: str, *extra: str) -> None:
    result = zoo("export", FAMILY, "--model", ckpt, "--weightless", "--component", "transformer", *extra, "--out", out)
    assert_error(result, message)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left


def test_missing_shard(tmp_path, sharded):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(sharded, ckpt)
    shard = checkpoint_files(ckpt / "transformer")[1]
    shard.unlink()
    _export_fails(ckpt, tmp_path / "out", f"names {shard.name}, which is not in {ckpt / 'transformer'}")


def test_truncated_shard(tmp_path, sharded):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(sharded, ckpt)
    shard = checkpoint_files(ckpt / "transformer")[0]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size - 100)
    _export_fails(ckpt, tmp_path / "out", f"weights file {shard} is truncated")


def test_tensor_shape_disagrees_with_the_config(tmp_path, sharded):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(sharded, ckpt)
    config_path = ckpt / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["text_dim"] += 8
    config_path.write_text(json.dumps(config))
    _export_fails(ckpt, tmp_path / "out", "tensor condition_embedder.text_embedder.linear_1.weight has shape")


def test_copy_weights_without_room(tmp_path, tiny_checkpoint, monkeypatch):
    import exporters.weights

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(exporters.weights.shutil, "disk_usage", lambda p: usage._replace(free=1000))
    _export_fails(tiny_checkpoint(FAMILY), tmp_path / "out", "not enough disk space", "--copy-weights")


def test_checkpoint_changed_after_export(tmp_path, tiny_checkpoint):
    """A linked checkpoint file changed in place is refused by name, at load time, by every path."""
    from exporters.manifest import load_manifest
    from runtimes.backends import OnnxRuntimeBackend

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(FAMILY), ckpt)
    out = tmp_path / "export"
    assert (
        zoo("export", FAMILY, "--model", ckpt, "--weightless", "--component", "face_encoder", "--out", out).exit_code
        == 0
    )
    shard = checkpoint_files(ckpt / "transformer")[0]
    header = read_header(shard)
    t = max(header.values(), key=lambda t: t.length)
    with open(shard, "r+b") as f:  # same size, same inode, other values
        f.seek(t.offset)
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ArtifactError, match=f"checkpoint file {shard} changed after export"):
        OnnxRuntimeBackend(load_manifest(out), "face_encoder").activate()
    assert_error(zoo("parity", out), "transformer/diffusion_pytorch_model.safetensors changed")


def test_refusals_of_the_options(tmp_path, tiny_checkpoint):
    result = zoo("export", FAMILY, "--tiny", "--load-weights", "--copy-weights", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "--copy-weights is for weightless export" in result.output
    assert not (tmp_path / "o").exists()


def test_lora_fused_by_diffusers_has_no_weightless_build(tmp_path):
    """AnimateDiff LoRAs are fused by diffusers into loaded weights: refused clearly before tracing."""
    result = zoo("random", "animatediff", "--out", tmp_path / "src")
    assert result.exit_code == 0, result.output
    src = tmp_path / "src"
    lora = next(src.glob("*.safetensors"))
    result = zoo(
        "export",
        "animatediff",
        "--model",
        src / "stable-diffusion",
        "--motion-adapter",
        src / "motion-adapter",
        "--lora",
        lora,
        "--weightless",
        "--component",
        "unet",
        "--out",
        tmp_path / "out",
    )
    assert_error(result, "component 'unet': its module 'unet' has no weightless build")
    assert not (tmp_path / "out").exists()


def test_safetensors_header_errors(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x05\x00")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        read_header(bad)
    bad.write_bytes((10**9).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="no readable safetensors header"):
        read_header(bad)
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    bad.unlink()
    with pytest.raises(CheckpointError, match="has no safetensors weights.*pytorch_model.bin"):
        checkpoint_files(tmp_path)


def test_weightless_family_end_to_end(tmp_path, tiny_export):
    """A whole family exported weightless (PixArt: T5, transformer, VAE decoder) generates the
    same image as one exported with its weights loaded (the session's cached export of the same
    tiny model: sigma, seed 0, the default envelope), and passes parity end to end."""
    from PIL import Image

    loaded, weightless = tiny_export("pixart", "sigma"), tmp_path / "weightless"
    assert load_manifest(loaded).sources[0]["preset"] == "tiny" and load_manifest(loaded).variant == "sigma"
    result = zoo("export", "pixart", "--tiny", "--weightless", "--out", weightless)
    assert result.exit_code == 0, result.output
    manifest = json.loads((weightless / "manifest.json").read_text())
    assert all(c.get("weight_map") for c in manifest["components"].values())
    result = zoo("parity", weightless)
    assert result.exit_code == 0, result.output
    assert "end_to_end" in result.output and result.output.count("initializers:") == 3
    images = []
    for export in (loaded, weightless):
        out = tmp_path / f"{'loaded' if export == loaded else 'weightless'}.png"
        result = zoo("run", export, "--prompt", "a red fox", "--steps", "3", "--seed", "7", "--out", out)
        assert result.exit_code == 0, result.output
        images.append(np.asarray(Image.open(out), dtype=np.int16))
    assert images[0].std() > 5  # an image, not a flat field
    assert np.abs(images[0] - images[1]).max() <= 1  # the same image, to 8-bit rounding


def test_corrupt_safetensors_offsets_are_refused(tmp_path):
    import struct

    def write(header: dict, data: bytes) -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "model.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
        return path

    path = write({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8)  # 4 bytes for 2 floats
    with pytest.raises(CheckpointError, match="tensor 'a' has a corrupt header entry"):
        read_header(path)
    path = write({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 8)  # begin > end
    with pytest.raises(CheckpointError, match="corrupt header entry"):
        read_header(path)
    path = write(
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        b"\0" * 8,
    )
    with pytest.raises(CheckpointError, match="tensors 'a' and 'b' overlap"):
        read_header(path)


def test_weight_map_names_only_files_inside_the_component(weightless, tmp_path):
    from exporters.weights import load_weight_map

    copy = tmp_path / "export"
    shutil.copytree(weightless, copy)
    path = copy / "transformer" / WEIGHT_MAP
    weight_map = json.loads(path.read_text())
    rel, info = next(iter(weight_map["files"].items()))
    weight_map["files"] = {"../../../etc/passwd": info}
    path.write_text(json.dumps(weight_map))
    with pytest.raises(ArtifactError, match="files names '../../../etc/passwd'"):
        load_weight_map(copy / "transformer")
    weight_map["files"] = {rel: info}
    name = next(iter(weight_map["initializers"]))
    weight_map["initializers"][name]["location"] = "/etc/passwd"
    path.write_text(json.dumps(weight_map))
    with pytest.raises(ArtifactError, match=f"its entry for '{name}' is malformed or names a file it does not list"):
        load_weight_map(copy / "transformer")


def test_checkpoint_without_safetensors_still_exports_by_default(tmp_path, tiny_checkpoint):
    """Weightless is the default only where it can be: .bin weights are loaded as before, and
    asking for --weightless on them says why it cannot be."""
    from diffusers import WanAnimateTransformer3DModel

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint(FAMILY), ckpt)
    module = WanAnimateTransformer3DModel.from_pretrained(str(ckpt), subfolder="transformer")
    shutil.rmtree(ckpt / "transformer")
    module.save_pretrained(ckpt / "transformer", safe_serialization=False)
    result = zoo("export", FAMILY, "--model", ckpt, "--component", "face_encoder", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert (
        "weight_map" not in json.loads((tmp_path / "out" / "manifest.json").read_text())["components"]["face_encoder"]
    )
    _export_fails(ckpt, tmp_path / "out2", "has no safetensors weights; a weightless export reads safetensors")


def test_bad_values_of_the_new_options(tmp_path, tiny_export):
    result = zoo("export", FAMILY, "--tiny", "--precision", "fp8", "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Invalid value for '--precision': 'fp8' is not one of" in result.output
    assert not (tmp_path / "o").exists()
    export = tiny_export("transformer-temporal")
    before = sorted(p.name for p in export.iterdir())
    assert_error(zoo("parity", export, "--weights-only"), "has no weightless component: there is no initializer check")
    assert sorted(p.name for p in export.iterdir()) == before  # no report written for a check that did not run


def test_linked_files_are_recorded_by_the_sha256_of_all_their_bytes(weightless, tmp_path):
    """weights.json names each linked file by what ``sha256sum`` prints; a map of format 1 (whose
    large files were identified by a sample of their bytes) is refused with the remedy."""
    import hashlib

    from exporters.weights import WEIGHT_MAP_FORMAT, load_weight_map

    weight_map = json.loads((weightless / "transformer" / WEIGHT_MAP).read_text())
    assert weight_map["format"] == WEIGHT_MAP_FORMAT == 2 and weight_map["files"]
    for rel, info in weight_map["files"].items():
        assert info["sha256"] == hashlib.sha256((weightless / "transformer" / rel).read_bytes()).hexdigest()
    copy = tmp_path / "export"
    shutil.copytree(weightless, copy, copy_function=os.link)
    for old in ({**weight_map, "format": 1}, {k: v for k, v in weight_map.items() if k != "format"}):
        (copy / "transformer" / WEIGHT_MAP).unlink()
        (copy / "transformer" / WEIGHT_MAP).write_text(json.dumps(old))
        with pytest.raises(
            ArtifactError,
            match=r"weights.json is missing or not a weight map \(format .*, this zoo reads 2: "
            r"an older zoo identified large checkpoint files by a sample .*re-export",
        ):
            load_weight_map(copy / "transformer")


def test_linking_records_the_digest_taken_before_the_link(tmp_path, monkeypatch):
    """A hard link changes the file's ctime: the export records the digest it already has (no
    second read of a checkpoint file during the export); the next check reads the file once more."""
    import hashlib
    import time

    from exporters.weights import link_checkpoint_files
    from zoo.infra import hashing

    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_MEMO", {})
    monkeypatch.setattr(hashing, "_DISK", {})
    monkeypatch.setattr(hashing, "SETTLE_NS", 0)
    reads = []
    real = hashing._read_digest
    monkeypatch.setattr(
        hashing, "_read_digest", lambda p, size, progress: reads.append(p) or real(p, size, progress=progress)
    )
    shard = tmp_path / "ckpt" / "model.safetensors"
    shard.parent.mkdir()
    shard.write_bytes(os.urandom(3 << 20))
    time.sleep(0.02)
    digest = hashing.file_sha256(shard)  # the export's record of its sources
    weight_map = {"initializers": {"w": {"location": str(shard), "offset": 0, "length": 8}}, "files": {}}
    link_checkpoint_files(weight_map, tmp_path / "export")
    assert weight_map["initializers"]["w"]["location"] == f"{WEIGHTS_DIR}/model.safetensors"
    assert weight_map["files"] == {
        f"{WEIGHTS_DIR}/model.safetensors": {"source": str(shard), "size": 3 << 20, "sha256": digest}
    }
    assert digest == hashlib.sha256(shard.read_bytes()).hexdigest() and len(reads) == 1
    assert hashing.file_sha256(tmp_path / "export" / WEIGHTS_DIR / "model.safetensors") == digest and len(reads) == 2
