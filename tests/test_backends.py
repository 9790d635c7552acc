"""Backends: feed validation before any runtime, artifact checks, values against the reference."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from exporters.manifest import load_manifest
from exporters.tensorrt import unavailable as tensorrt_unavailable
from runtimes.backends import Backend, OnnxRuntimeBackend, TorchBackend, load_backend
from zoo.errors import ArtifactError, BackendUnavailableError, InputError, OutputError, UnknownFamilyError
from zoo.registry import get_family


@pytest.fixture(scope="module")
def transformer(tiny_export):
    out = tiny_export("pixart", "sigma")
    manifest = load_manifest(out)
    backend = OnnxRuntimeBackend(manifest, "transformer")
    ref = get_family("pixart").load(manifest.source_paths()[0].path)
    feeds = (
        get_family("pixart").component("transformer").sample_inputs(ref, manifest.component("transformer").point("opt"))
    )
    return backend, feeds


def test_runs_and_matches_torch(transformer, tiny_export):
    backend, feeds = transformer
    torch_backend = TorchBackend(load_manifest(tiny_export("pixart", "sigma")), "transformer")
    got, want = backend(feeds)["sample"], torch_backend(feeds)["sample"]
    assert got.shape == want.shape == (2, 8, 8, 8)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)


def test_numpy_feeds_accepted(transformer):
    backend, feeds = transformer
    out = backend({k: v.numpy() for k, v in feeds.items()})["sample"]
    assert isinstance(out, torch.Tensor) and out.shape == (2, 8, 8, 8)


def _edit(feeds, **changes):
    new = dict(feeds)
    for k, v in changes.items():
        if v is None:
            new.pop(k)
        else:
            new[k] = v
    return new


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: _edit(f, timestep=None), r"component 'transformer': missing input\(s\) timestep; expected exactly"),
        (lambda f: _edit(f, extra=torch.zeros(1)), r"unexpected input\(s\) extra"),
        (lambda f: _edit(f, timestep=f["timestep"].long()), r"input 'timestep': dtype int64, expected float32"),
        (lambda f: _edit(f, hidden_states=f["hidden_states"][0]), r"input 'hidden_states': rank 3 .*expected rank 4"),
        (
            lambda f: _edit(f, hidden_states=torch.zeros(2, 4, 14, 8)),
            r"input 'hidden_states': dim 2 \(latent_height\) is 14, must be in \[4, 12\] \(exported profile\)",
        ),
        (
            lambda f: _edit(f, hidden_states=torch.zeros(2, 4, 7, 8)),
            r"dim 2 \(latent_height\) is 7, must be a multiple of 2",
        ),
        (
            lambda f: _edit(f, hidden_states=torch.zeros(2, 3, 8, 8)),
            r"input 'hidden_states': dim 1 \(in_channels\) is 3, expected 4",
        ),
        (lambda f: {k: v[:0] for k, v in f.items()}, r"dim 0 \(cfg_batch\) is 0, must be in \[1, 4\]"),
        (
            lambda f: _edit(f, timestep=torch.zeros(3)),
            r"input 'timestep': dim 0 \(cfg_batch\) is 3, but input 'hidden_states' has cfg_batch = 2",
        ),
        (
            lambda f: _edit(f, encoder_hidden_states=torch.zeros(2, 400, 32)),
            r"dim 1 \(text_length\) is 400, must be in \[16, 300\]",
        ),
        (
            lambda f: _edit(
                f, hidden_states=f["hidden_states"].clone().index_fill_(0, torch.tensor([0]), float("nan"))
            ),
            r"input 'hidden_states': contains 256 NaN and 0 Inf values",
        ),
        (lambda f: _edit(f, hidden_states="x"), r"expected a torch.Tensor or numpy array, got str"),
    ],
)
def test_bad_feeds_raise_before_runtime(transformer, monkeypatch, change, message):
    backend, feeds = transformer
    monkeypatch.setattr(backend, "_run", lambda feeds: pytest.fail("the runtime was touched"))
    with pytest.raises(InputError, match=message):
        backend(change(feeds))


def test_nan_outputs_raise(transformer, monkeypatch):
    backend, feeds = transformer
    monkeypatch.setattr(backend, "_run", lambda f: {"sample": torch.full((2, 8, 8, 8), float("nan"))})
    with pytest.raises(OutputError, match=r"output 'sample': 1024 NaN and 0 Inf values .*nothing written"):
        backend(feeds)


def test_wrong_output_shape_raises(transformer, monkeypatch):
    backend, feeds = transformer
    monkeypatch.setattr(backend, "_run", lambda f: {"sample": torch.zeros(2, 8, 8, 6)})
    with pytest.raises(OutputError, match=r"output 'sample': dim 3 is 6, expected 8"):
        backend(feeds)


def test_truncated_onnx(copied_export):
    model = copied_export / "transformer" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1000])
    with pytest.raises(ArtifactError, match=r"model.onnx is \d+ bytes, the manifest says \d+: truncated or replaced"):
        load_backend("onnxruntime", load_manifest(copied_export), "transformer")


def test_empty_onnx(copied_export):
    (copied_export / "transformer" / "model.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match="model.onnx is empty"):
        load_backend("onnxruntime", load_manifest(copied_export), "transformer")


def test_lfs_pointer_onnx(copied_export):
    (copied_export / "transformer" / "model.onnx").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ArtifactError, match="is a git-LFS pointer, not a model"):
        load_backend("onnxruntime", load_manifest(copied_export), "transformer")


def test_corrupted_onnx_of_right_size(copied_export):
    model = copied_export / "transformer" / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in a weight: same size, wrong model
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match the sha256 in the manifest: corrupted or replaced"):
        load_backend("onnxruntime", load_manifest(copied_export), "transformer")


def test_unreadable_onnx_with_matching_manifest(copied_export):
    import json

    from zoo.infra.hashing import file_sha256

    model = copied_export / "transformer" / "model.onnx"
    model.write_bytes(b"\xff" * model.stat().st_size)
    manifest = json.loads((copied_export / "manifest.json").read_text())
    manifest["components"]["transformer"]["sha256"] = file_sha256(model)
    (copied_export / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="is not a readable ONNX model"):
        load_backend("onnxruntime", load_manifest(copied_export), "transformer")


def test_bad_device_is_named(tiny_export):
    with pytest.raises(InputError, match="--device 'foo': expected cpu, cuda or cuda:N"):
        load_backend("onnxruntime", load_manifest(tiny_export("transformer-temporal", "default")), "transformer", "foo")


def test_missing_and_truncated_external_data(tmp_path, external_data_export):
    fam = get_family("transformer-temporal")
    shutil.copytree(external_data_export[0], tmp_path / "out")
    manifest = load_manifest(tmp_path / "out")
    backend = load_backend("onnxruntime", manifest, "transformer")  # whole: loads and runs
    feeds = fam.component("transformer").sample_inputs(
        fam.load(manifest.source_paths()[0].path), manifest.component("transformer").point()
    )
    assert backend(feeds)["sample"].shape == feeds["hidden_states"].shape
    data = tmp_path / "out" / "transformer" / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-64])
    with pytest.raises(
        ArtifactError, match=r"external data .*model.onnx.data is \d+ bytes, the manifest says \d+: truncated"
    ):
        load_backend("onnxruntime", manifest, "transformer")
    data.unlink()
    with pytest.raises(ArtifactError, match=r"external data .*model.onnx.data of .*model.onnx is missing"):
        load_backend("onnxruntime", manifest, "transformer")


def test_unknown_backend(tiny_export):
    with pytest.raises(UnknownFamilyError, match="unknown backend 'tvm'; choose one of torch, onnxruntime, tensorrt"):
        load_backend("tvm", load_manifest(tiny_export("transformer-temporal", "default")), "transformer")


@pytest.mark.skipif(tensorrt_unavailable() is None, reason="TensorRT and a GPU are present: this checks their absence")
def test_tensorrt_absent_is_a_clear_error(tiny_export):
    with pytest.raises(BackendUnavailableError, match="the tensorrt backend is not available here: "):
        load_backend("tensorrt", load_manifest(tiny_export("transformer-temporal", "default")), "transformer")


def test_onnxruntime_cuda_without_gpu_provider(tiny_export):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: this checks its absence (needs a CPU-only onnxruntime)")
    with pytest.raises(BackendUnavailableError, match="onnxruntime on device cuda needs onnxruntime-gpu"):
        load_backend(
            "onnxruntime", load_manifest(tiny_export("transformer-temporal", "default")), "transformer", "cuda"
        )


def test_torch_backend_needs_its_reference(copied_export):
    shutil.rmtree(copied_export / "reference")
    with pytest.raises(
        ArtifactError, match="the torch reference needs the model source .*reference/model, recorded in"
    ):
        load_backend("torch", load_manifest(copied_export), "transformer")


def test_unknown_component(tiny_export):
    with pytest.raises(ArtifactError, match="has no component 'unet'; it has transformer"):
        load_backend("onnxruntime", load_manifest(tiny_export("transformer-temporal", "default")), "unet")


@pytest.mark.cuda
def test_onnxruntime_cuda_matches_reference(tiny_export):
    """On a GPU machine with onnxruntime-gpu: the CUDA provider against the torch reference."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider) on this GPU machine")
    from parity.compare import component_parity

    rows = component_parity(tiny_export("pixart", "sigma"), backend="onnxruntime", device="cuda")
    assert rows and all(r.ok for r in rows), [r.failures for r in rows if not r.ok]
    assert np.isfinite([r.metrics.max_abs for r in rows]).all()


# --------------------------------------------------------------------------------------
# Derived dims and state pairs, on a backend whose runtime is a function (no graph needed)
# --------------------------------------------------------------------------------------


def _fake_manifest(tmp_path):
    from exporters.manifest import ComponentRecord, Manifest, TensorRecord
    from zoo.contract import Dim

    t = Dim("t", 2, 3, 9)
    dims = {"t": t, "pixel": Dim.derived("pixel", t, scale=4, offset=-3), "c": Dim.static("c", 2)}
    record = ComponentRecord(
        name="chunk",
        kind="vae_decoder",
        module="vae",
        file="chunk/model.onnx",
        size=0,
        sha256="",
        external_data={},
        inputs=(TensorRecord("x", "float32", ("t", "c")), TensorRecord("cache", "float32", ("c",))),
        outputs=(TensorRecord("y", "float32", ("pixel", "c")), TensorRecord("cache_out", "float32", ("c",))),
        dims=dims,
        precision="float32",
        opset=18,
        state={"cache_out": "cache"},
    )
    return Manifest(
        "fake", "default", [{"role": "model", "path": "m", "hash": ""}], {}, {}, {}, {"chunk": record}, root=tmp_path
    )


class _Chunk(Backend):  # Backend: a "runtime" that upsamples frames and counts calls
    name = "chunk"

    def _load(self):
        self.loads = getattr(self, "loads", 0) + 1

    def _run(self, feeds):
        x = feeds["x"]
        frames = 4 * x.shape[0] - 3
        return {"y": x[:1].expand(frames, x.shape[1]) * 2, "cache_out": feeds["cache"] + 1}


def test_state_pairs_stay_between_calls(tmp_path):
    backend = _Chunk(_fake_manifest(tmp_path), "chunk")
    assert not backend.is_active
    x = torch.ones(3, 2)
    with pytest.raises(InputError, match=r"missing input\(s\) cache"):
        backend({"x": x})  # no state yet, none given
    backend.set_state({"cache": torch.zeros(2)})
    assert backend({"x": x})["cache_out"].tolist() == [1.0, 1.0]
    assert backend({"x": x})["cache_out"].tolist() == [2.0, 2.0]  # the previous call's output fed back
    assert backend({"x": x, "cache": torch.full((2,), 10.0)})["cache_out"].tolist() == [11.0, 11.0]  # a feed wins
    assert backend.loads == 1 and backend.is_active
    with pytest.raises(InputError, match=r"x are not state inputs; its state inputs are cache"):
        backend.set_state({"x": x})
    backend.deactivate()
    assert not backend.is_active and not backend.state
    with backend:
        assert backend.is_active
    assert not backend.is_active


def test_derived_output_dims_are_validated_whole(tmp_path, monkeypatch):
    backend = _Chunk(_fake_manifest(tmp_path), "chunk")
    backend.set_state({"cache": torch.zeros(2)})
    assert backend({"x": torch.ones(5, 2)})["y"].shape == (17, 2)  # pixel = 4 t - 3
    monkeypatch.setattr(backend, "_run", lambda f: {"y": torch.zeros(16, 2), "cache_out": f["cache"]})
    with pytest.raises(OutputError, match=r"output 'y': dim 0 is 16, expected 17"):
        backend({"x": torch.ones(5, 2)})
