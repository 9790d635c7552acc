"""Checkpoint folders: clear errors for missing, empty, foreign and LFS-pointer folders; loading."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.errors import CheckpointError
from zoo.infra.checkpoint import content_hash
from zoo.registry import get_family

ROOT = Path(__file__).resolve().parents[1]


def test_missing_folder(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"checkpoint folder .*nope does not exist; expected a diffusers-format folder of"
    ):
        get_family("pixart").load(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint folder .* is empty"):
        get_family("pixart").load(tmp_path)


def test_folder_without_index(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="has no model_index.json"):
        get_family("pixart").load(tmp_path)


def test_folder_of_another_model(tiny_checkpoint):
    temporal = tiny_checkpoint("transformer-temporal")
    with pytest.raises(CheckpointError, match="has no model_index.json"):
        get_family("pixart").load(temporal)
    pixart = tiny_checkpoint("pixart")
    with pytest.raises(CheckpointError, match=r"has no config.json; expected .*TransformerTemporalModel"):
        get_family("transformer-temporal").load(pixart)
    with pytest.raises(
        CheckpointError, match=r"holds a PixArtTransformer2DModel checkpoint; expected .*TransformerTemporalModel"
    ):
        get_family("transformer-temporal").load(pixart / "transformer")


def test_other_pipeline_class(tmp_path, tiny_checkpoint):
    folder = tmp_path / "sd"
    shutil.copytree(tiny_checkpoint("pixart"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match=r"holds a StableDiffusionPipeline checkpoint; expected .*PixArtSigmaPipeline"
    ):
        get_family("pixart").load(folder)


def test_lfs_pointer_weights(tmp_path, tiny_checkpoint):
    folder = tmp_path / "lfs"
    shutil.copytree(tiny_checkpoint("transformer-temporal"), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    with pytest.raises(CheckpointError, match="is a git-LFS pointer, not the weights; run `git lfs pull`"):
        get_family("transformer-temporal").load(folder)


def test_truncated_weights_are_a_checkpoint_error(tmp_path, tiny_checkpoint):
    folder = tmp_path / "cut"
    shutil.copytree(tiny_checkpoint("transformer-temporal"), folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="could not load TransformerTemporalModel"):
        get_family("transformer-temporal").load(folder)


@pytest.mark.parametrize("variant", ["sigma", "alpha-1024", "alpha-512"])
def test_pixart_variant_detected_from_checkpoint(tiny_checkpoint, variant):
    ref = get_family("pixart").load(tiny_checkpoint("pixart", variant))
    assert ref.variant == variant
    assert ref.pipeline == {"sigma": "PixArtSigmaPipeline"}.get(variant, "PixArtAlphaPipeline")
    assert set(ref.modules) >= {"text_encoder", "transformer", "vae", "tokenizer", "scheduler"}


def test_content_hash_is_stable_and_sensitive(tmp_path, tiny_checkpoint):
    folder = tmp_path / "c"
    shutil.copytree(tiny_checkpoint("transformer-temporal"), folder)
    first = content_hash(folder)
    assert content_hash(folder) == first
    config = folder / "config.json"
    config.write_text(config.read_text().replace('"num_layers": 1', '"num_layers": 2'))
    assert content_hash(folder) != first


def test_temporal_with_cross_attention_is_refused(tmp_path):
    from diffusers import TransformerTemporalModel

    TransformerTemporalModel(
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=16,
        norm_num_groups=4,
        cross_attention_dim=24,
        double_self_attention=False,
    ).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="cross-attends to encoder_hidden_states"):
        get_family("transformer-temporal").load(tmp_path)


# --------------------------------------------------------------------------------------
# Whole-content hashes, remembered by file identity
# --------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty hash cache of this test's own, and a count of the files actually read."""
    from zoo.infra import hashing

    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_MEMO", {})
    monkeypatch.setattr(hashing, "_DISK", {})
    reads: list[Path] = []
    real = hashing._read_digest

    def counting(path, size, *, progress):
        reads.append(Path(path))
        return real(path, size, progress=progress)

    monkeypatch.setattr(hashing, "_read_digest", counting)
    return reads


def _settled(monkeypatch) -> None:
    """Remember digests of files written a moment ago (the test's own files are all that recent)."""
    from zoo.infra import hashing

    monkeypatch.setattr(hashing, "SETTLE_NS", 0)


def _write(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    time.sleep(0.02)  # past a filesystem timestamp tick: a later write gets another mtime and ctime
    return path


def test_file_sha256_is_the_sha256_of_every_byte(tmp_path, cache):
    from zoo.infra.hashing import file_sha256

    for size in (0, 10, (1 << 20) + 7):
        f = _write(tmp_path / f"f{size}", size)
        assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def _content_hash_as_recorded(path: Path) -> str:
    """content_hash as manifests have recorded it: over the sorted Paths' name, size and sha256."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = f.name if f == path else f.relative_to(path).as_posix()
        h.update(f"{rel}\0{f.stat().st_size}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()


def test_content_hash_of_file_hashes_is_content_hash(tmp_path, cache):
    """The content hash derived from file_hashes is content_hash, and the value manifests recorded,
    in the order of sorted Paths ("a/b" before "a-c", which a plain string sort reverses)."""
    from zoo.infra.checkpoint import content_hash_of, file_hashes

    folder = tmp_path / "model"
    for rel, size in (("a-c", 3), ("a/b", 5), ("a/b.json", 0), ("x/y/z.bin", 4096), ("B", 1)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        _write(folder / rel, size)
    hashes = file_hashes(folder)
    assert content_hash_of(folder, hashes) == content_hash(folder) == _content_hash_as_recorded(folder)
    assert content_hash_of(folder, dict(reversed(hashes.items()))) == content_hash(folder)  # order-free
    one = folder / "x" / "y" / "z.bin"
    assert content_hash_of(one, file_hashes(one)) == content_hash(one) == _content_hash_as_recorded(one)


def test_export_reads_each_source_file_once(tmp_path, cache):
    """The export records each source's content hash and per-file hashes from one read of each file
    (files under 1 MiB are not remembered by zoo.infra.hashing, so a second hash would read them again)."""
    from exporters.onnx import _record_sources
    from zoo.contract import Source
    from zoo.infra.checkpoint import file_hashes

    folder = tmp_path / "model"
    folder.mkdir()
    files = [_write(folder / name, 100) for name in ("config.json", "model.safetensors")]
    lora = _write(tmp_path / "style.safetensors", 100)
    records = _record_sources((Source("model", folder), Source("lora", lora, 0.5)), None)
    assert sorted(cache) == sorted([*files, lora])
    assert [(r["hash"], r["files"]) for r in records] == [
        (_content_hash_as_recorded(folder), file_hashes(folder)),
        (_content_hash_as_recorded(lora), file_hashes(lora)),
    ]


def test_large_file_is_read_once_then_found_by_identity(tmp_path, cache, monkeypatch):
    from zoo.infra import hashing

    _settled(monkeypatch)
    f = _write(tmp_path / "w.safetensors", 3 << 20)
    digest = hashing.file_sha256(f)
    assert hashing.file_sha256(f) == digest and cache == [f]
    hashing._MEMO.clear()  # a new process: found in the cache file
    hashing._DISK.clear()
    assert hashing.file_sha256(f) == digest and cache == [f]
    saved = json.loads(hashing.cache_file().read_text())["entries"]
    assert [e["sha256"] for e in saved.values()] == [digest]
    # and another process finds it without reading the file (reading would fail: it cannot open it)
    code = (
        "import sys; from zoo.infra import hashing; hashing._read_digest = None; "
        f"print(hashing.file_sha256({str(f)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == digest


def test_recently_written_file_is_not_remembered(tmp_path, cache):
    """Within one timestamp tick a file can change again with the same identity: not cached."""
    from zoo.infra import hashing

    f = tmp_path / "fresh.bin"
    f.write_bytes(os.urandom(2 << 20))
    hashing.file_sha256(f)
    hashing.file_sha256(f)
    assert cache == [f, f] and not hashing.cache_file().exists()


def test_remembered_digest_is_dropped_when_the_file_changes(tmp_path, cache, monkeypatch):
    from zoo.infra import hashing

    _settled(monkeypatch)
    f = _write(tmp_path / "w.bin", 2 << 20)
    first = hashing.file_sha256(f)
    # same size, other bytes, the old mtime restored: the ctime still differs
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"\xff\xfe")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (f.stat().st_size, f.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert f.stat().st_ctime_ns != st.st_ctime_ns
    second = hashing.file_sha256(f)
    assert second != first and second == hashlib.sha256(f.read_bytes()).hexdigest()
    time.sleep(0.02)
    with open(f, "ab") as fh:  # another size
        fh.write(b"x")
    third = hashing.file_sha256(f)
    time.sleep(0.02)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))  # another mtime only
    assert hashing.file_sha256(f) == third
    assert cache == [f, f, f, f]
    assert hashing.file_sha256(f) == third and len(cache) == 4  # and that version is remembered


@pytest.mark.parametrize(
    "content", [b"{corrupt", b"\xff\xfe\x00", b"[]", b'{"format": 1, "entries": []}', b'{"format": 99, "entries": {}}']
)
def test_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, cache, monkeypatch, content):
    from zoo.infra import hashing

    _settled(monkeypatch)
    f = _write(tmp_path / "w.bin", 2 << 20)
    hashing.cache_file().parent.mkdir(parents=True)
    hashing.cache_file().write_bytes(content)
    digest = hashing.file_sha256(f)
    assert digest == hashlib.sha256(f.read_bytes()).hexdigest() and cache == [f]
    hashing._MEMO.clear()
    assert hashing.file_sha256(f) == digest and cache == [f]  # the rewritten cache is used
    assert json.loads(hashing.cache_file().read_text())["format"] == hashing.CACHE_FORMAT


@pytest.mark.parametrize("entry", [{"sha256": "not hex"}, {"sha256": 5}, {"sha256": "ab" * 32, "size": "1"}, "x", None])
def test_malformed_cache_entry_is_ignored(tmp_path, cache, monkeypatch, entry):
    from zoo.infra import hashing

    _settled(monkeypatch)
    f = _write(tmp_path / "w.bin", 2 << 20)
    st = f.stat()
    good = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "sha256": "ab" * 32}
    value = {**good, **entry} if isinstance(entry, dict) else entry
    hashing.cache_file().parent.mkdir(parents=True)
    hashing.cache_file().write_text(json.dumps({"format": 1, "entries": {f"{st.st_dev}:{st.st_ino}": value}}))
    assert hashing.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest() and cache == [f]


def test_a_file_that_keeps_changing_while_hashed_is_refused(tmp_path, monkeypatch):
    from zoo.errors import ArtifactError
    from zoo.infra import hashing

    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "cache"))
    f = _write(tmp_path / "w.bin", 2 << 20)
    real = hashing._read_digest
    writes = []

    def busy(path, size, *, progress):  # a writer appends while each read goes on
        digest = real(path, size, progress=progress)
        if len(writes) < limit:
            with open(path, "ab") as fh:
                fh.write(b"x")
            writes.append(1)
        return digest

    monkeypatch.setattr(hashing, "_read_digest", busy)
    limit = 1  # changed once: read again, and the digest is of the final bytes
    assert hashing.file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    limit = 10
    with pytest.raises(ArtifactError, match=f"{f} kept changing while it was being hashed; run again once"):
        hashing.file_sha256(f)


def test_what_is_not_a_regular_file_is_refused_without_reading(tmp_path):
    from zoo.errors import ArtifactError
    from zoo.infra.hashing import file_sha256

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ArtifactError, match=f"{fifo} is not a regular file"):
        file_sha256(fifo)  # would block forever if it were opened


def test_cache_folder_from_the_environment(monkeypatch, tmp_path):
    from zoo.infra import hashing

    monkeypatch.setenv(hashing.CACHE_ENV, str(tmp_path / "mine"))
    assert hashing.cache_file() == tmp_path / "mine" / hashing.CACHE_FILE
    monkeypatch.delenv(hashing.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hashing.cache_dir() == tmp_path / "xdg" / "zoo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert hashing.cache_dir() == tmp_path / "home" / ".cache" / "zoo"
    monkeypatch.setattr(Path, "home", lambda: (_ for _ in ()).throw(RuntimeError("no home")))
    assert hashing.cache_file() is None  # then digests last the process


def test_without_a_cache_folder_digests_last_the_process(tmp_path, cache, monkeypatch):
    from zoo.infra import hashing

    _settled(monkeypatch)
    monkeypatch.setattr(hashing, "cache_file", lambda: None)
    f = _write(tmp_path / "w.bin", 2 << 20)
    digest = hashing.file_sha256(f)
    assert hashing.file_sha256(f) == digest and cache == [f]


def test_unwritable_cache_folder_still_hashes(tmp_path, cache, monkeypatch):
    from zoo.infra import hashing

    _settled(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv(hashing.CACHE_ENV, str(blocker / "zoo"))
    f = _write(tmp_path / "w.bin", 2 << 20)
    digest = hashing.file_sha256(f)
    assert hashing.file_sha256(f) == digest and cache == [f]  # remembered in this process


# --------------------------------------------------------------------------------------
# A same-size fine-tune that differs only in a middle tensor of a file over 64 MB
# --------------------------------------------------------------------------------------

BIG = "big.safetensors"


def _middle_tensor_checkpoint(path: Path) -> tuple[int, int]:
    """A 72 MiB safetensors file of three tensors; returns the byte range of the middle one."""
    import torch
    from safetensors.torch import save_file

    from exporters.weights import read_header

    mib = 1 << 18  # float32 elements per MiB
    save_file(
        {
            "a.weight": torch.full((4 * mib,), 0.5),
            "b.weight": torch.full((64 * mib,), 0.25),
            "c.weight": torch.full((4 * mib,), 0.125),
        },
        str(path),
    )
    t = read_header(path)["b.weight"]
    assert (
        path.stat().st_size > 70 << 20
        and t.offset >= 4 << 20
        and path.stat().st_size - (t.offset + t.length) >= 4 << 20
    )
    return t.offset, t.length


def _fine_tune_middle(path: Path, offset: int, length: int) -> None:
    """Change 4 bytes in the middle tensor in place: same size, same first and last MiB."""
    size = path.stat().st_size
    ends = _ends(path)
    time.sleep(0.02)
    with open(path, "r+b") as f:
        f.seek(offset + length // 2)
        f.write(b"\x00\x00\x00\x3f")  # one element 0.25 -> 0.5 (float32, little-endian)
    assert path.stat().st_size == size and _ends(path) == ends


def _ends(path: Path) -> tuple[bytes, bytes]:
    """The first and last MiB: all that the sampled hash read of a file over 64 MB."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
        f.seek(-(1 << 20), os.SEEK_END)
        return head, f.read()


@pytest.mark.parametrize("remembered", [False, True], ids=["fresh", "remembered"])
def test_middle_tensor_of_a_large_file_gives_a_new_engine_key_and_a_changed_source(
    copied_export, cache, monkeypatch, remembered
):
    """The case the sampled hash missed, on the real paths: the engine key of a component whose
    external data is a hard link to the checkpoint file (as a weightless export makes), and the
    torch reference's check of its source folder; with the digests just computed, and with them
    remembered by file identity (the change must invalidate them)."""
    from exporters import tensorrt as engines
    from exporters.manifest import load_manifest
    from runtimes import backends
    from zoo.errors import ArtifactError
    from zoo.infra.checkpoint import content_hash, file_hashes

    if remembered:
        _settled(monkeypatch)
    big = copied_export / "reference" / "model" / BIG
    offset, length = _middle_tensor_checkpoint(big)
    (copied_export / "transformer" / "weights").mkdir()
    os.link(big, copied_export / "transformer" / "weights" / BIG)
    raw = json.loads((copied_export / "manifest.json").read_text())
    raw["components"]["transformer"]["external_data"][f"transformer/weights/{BIG}"] = big.stat().st_size
    source = raw["sources"][0]
    assert source["path"] == "reference/model"
    source["hash"], source["files"] = content_hash(big.parent), file_hashes(big.parent)  # as the export records
    (copied_export / "manifest.json").write_text(json.dumps(raw))
    monkeypatch.setattr(backends, "_REFERENCES", {})

    def key() -> str:
        manifest = load_manifest(copied_export)
        spec = engines.build_specs(manifest, ("transformer",))[0]
        return engines.with_content(spec, manifest).key(engines.Target("10.8.0.43", "9.0", "NVIDIA H200"))

    before = key()
    assert key() == before
    backends.load_reference(load_manifest(copied_export))  # the recorded source: accepted
    # recorded (twice), two keys, the reference's check: read each time, or once (the hard link is the same file)
    assert [p.name for p in cache].count(BIG) == (1 if remembered else 5)
    _fine_tune_middle(big, offset, length)
    assert key() != before
    monkeypatch.setattr(backends, "_REFERENCES", {})
    with pytest.raises(
        ArtifactError, match=rf"the model source .* changed since the export \({BIG} changed\).*re-export"
    ):
        backends.load_reference(load_manifest(copied_export))
