"""ONNX export: manifest, named dims, checks, TensorRT-parser support, atomic folders."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

import exporters.onnx as onnx_export
from exporters.manifest import load_manifest
from exporters.onnx import check_graph, export_family, random_reference
from zoo.contract import Range
from zoo.errors import ArtifactError, EnvelopeError, ExportError
from zoo.infra.checkpoint import content_hash
from zoo.registry import get_family


def test_manifest_records_family_source_versions_and_dims(tiny_export):
    out = tiny_export("pixart", "alpha-1024")
    m = load_manifest(out)
    assert (m.family, m.variant, m.pipeline) == ("pixart", "alpha-1024", "PixArtAlphaPipeline")
    (source,) = m.sources
    assert source["role"] == "model" and source["path"] == "reference/model" and source["preset"] == "tiny"
    assert source["hash"] == content_hash(out / "reference" / "model") and m.preset == "tiny"
    assert {"torch", "diffusers", "transformers", "onnx", "zoo"} <= set(m.versions)
    assert set(m.components) == {"text_encoder", "transformer", "vae_decoder"}
    t = m.components["transformer"]
    assert [i.name for i in t.inputs] == [
        "hidden_states",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "timestep",
        "resolution",
        "aspect_ratio",
    ]
    assert t.dims["cfg_batch"].to_json() == {"min": 1, "opt": 2, "max": 4, "multiple_of": 1}
    assert t.dims["latent_height"].to_json() == {"min": 4, "opt": 8, "max": 12, "multiple_of": 2}
    assert m.envelope["height"] == Range(32, 64, 96)
    assert m.axes["height"].multiple_of == 16
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["format_version"] == 3 and raw["envelope"]["height"]["unit"] == "pixels"
    decoder = m.components["vae_decoder"]
    assert decoder.dims["height"].to_json() == {
        "min": 32,
        "opt": 64,
        "max": 96,
        "multiple_of": 1,
        "of": "latent_height",
        "scale": 8,
        "offset": 0,
    }
    assert raw["components"]["vae_decoder"]["outputs"][0]["shape"] == ["batch", 3, "height", "width"]


def test_sigma_has_no_size_condition_inputs(tiny_export):
    m = load_manifest(tiny_export("pixart", "sigma"))
    assert [i.name for i in m.components["transformer"].inputs] == [
        "hidden_states",
        "encoder_hidden_states",
        "encoder_attention_mask",
        "timestep",
    ]
    assert m.envelope["text_length"].opt == 300


@pytest.mark.parametrize("family, variant", [("pixart", "sigma"), ("transformer-temporal", "default")])
def test_graph_io_carries_contract_dim_names(tiny_export, family, variant):
    out = tiny_export(family, variant)
    m = load_manifest(out)
    for record in m.components.values():
        model = onnx.load(str(out / record.file))
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version >= 17
        io = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
        for spec in record.inputs + record.outputs:
            got = [d.dim_param or d.dim_value for d in io[spec.name].type.tensor_type.shape.dim]
            static = {k: d.min for k, d in record.dims.items() if d.min == d.max}
            want = [static.get(d, d) if isinstance(d, str) else d for d in spec.shape]
            assert got == want, (record.name, spec.name)
        ops = {n.op_type for n in model.graph.node}
        assert "Einsum" not in ops


def test_temporal_frames_are_dynamic(tiny_export):
    out = tiny_export("transformer-temporal", "default")
    model = onnx.load(str(out / "transformer" / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 16, "frames", "height", "width"]


def _write_model(path, op_type="Relu", dtype=TensorProto.FLOAT):
    x = helper.make_tensor_value_info("x", dtype, [2])
    y = helper.make_tensor_value_info("y", dtype, [2])
    graph = helper.make_graph([helper.make_node(op_type, ["x"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def test_check_graph_accepts_supported_graph(tmp_path):
    _write_model(tmp_path / "ok.onnx")
    check_graph(tmp_path / "ok.onnx", "c")


def test_check_graph_rejects_operators_tensorrt_lacks(tmp_path):
    _write_model(tmp_path / "bad.onnx", op_type="Bernoulli")
    with pytest.raises(
        ExportError, match="component 'c': operators the TensorRT ONNX parser does not import: Bernoulli"
    ):
        check_graph(tmp_path / "bad.onnx", "c")


def test_check_graph_rejects_double(tmp_path):
    _write_model(tmp_path / "f64.onnx", dtype=TensorProto.DOUBLE)
    with pytest.raises(ExportError, match=r"tensors of types TensorRT lacks: .*DOUBLE"):
        check_graph(tmp_path / "f64.onnx", "c")


def test_bad_envelope_fails_before_tracing(tiny_checkpoint, monkeypatch):
    fam = get_family("pixart")
    ref = fam.load(tiny_checkpoint("pixart"))
    with pytest.raises(EnvelopeError, match=r"--height 32:72:96: height must be a multiple of 16 pixels, got 72"):
        fam.envelope(ref, {"height": Range(32, 72, 96)})
    with pytest.raises(EnvelopeError, match="family 'pixart' has no axis frames"):
        fam.envelope(ref, {"frames": Range(8, 8, 8)})


def test_failed_export_leaves_previous_folder_untouched(copied_export, tiny_checkpoint, tmp_path, monkeypatch):
    """The previous folder: a copy of the session's export of the same tiny model."""
    fam = get_family("transformer-temporal")
    out = copied_export
    ref = fam.load(tiny_checkpoint("transformer-temporal", "default"))
    before = (out / "manifest.json").read_bytes()

    def broken(*args, **kwargs):
        raise ExportError("simulated failure")

    monkeypatch.setattr(onnx_export, "export_component", broken)
    with pytest.raises(ExportError, match="simulated failure"):
        export_family(fam, ref, fam.envelope(ref), out, carry_reference=True, progress=False)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no staging leftovers


def test_failed_first_export_writes_nothing(tmp_path, monkeypatch):
    fam = get_family("transformer-temporal")
    monkeypatch.setattr(onnx_export, "export_component", lambda *a, **k: (_ for _ in ()).throw(ExportError("boom")))
    with random_reference(fam, variant="default", preset="tiny") as ref, pytest.raises(ExportError):
        export_family(fam, ref, fam.envelope(ref), tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_manifest_is_clear(tmp_path):
    with pytest.raises(ArtifactError, match="has no manifest.json: not a zoo export folder"):
        load_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_manifest(tmp_path / "nope")


def test_corrupt_manifest_is_clear(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="manifest.json is not readable JSON"):
        load_manifest(tmp_path)


def test_external_data_export(external_data_export):
    """Large graphs keep weights beside the graph; the manifest records and checks the file."""
    out, _ = external_data_export
    record = load_manifest(out).components["transformer"]
    assert list(record.external_data) == ["transformer/model.onnx.data"]
    assert (out / "transformer" / "model.onnx.data").stat().st_size == record.external_data[
        "transformer/model.onnx.data"
    ]


def test_export_refuses_to_replace_a_folder_that_is_not_an_export(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    fam = get_family("transformer-temporal")
    with (
        random_reference(fam, variant="default", preset="tiny") as ref,
        pytest.raises(ExportError, match="exists and is not a zoo export folder: choose a new or empty folder"),
    ):
        export_family(fam, ref, fam.envelope(ref), out, progress=False)
    assert (out / "notes.txt").read_text() == "precious"


def test_staged_dirs_racing_for_one_path_leave_one_whole_folder(tmp_path):
    import threading

    from exporters.artifacts import staged_dir

    final = tmp_path / "out"
    barrier = threading.Barrier(4)

    def write(tag: str) -> None:
        with staged_dir(final) as stage:
            for i in range(20):
                (stage / f"{i}.txt").write_text(tag)
            barrier.wait()

    threads = [threading.Thread(target=write, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    contents = {p.read_text() for p in final.iterdir()}
    assert len(contents) == 1 and len(list(final.iterdir())) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_shape_profile_follows_the_manifest(tiny_export):
    from exporters.profiles import shape_profile

    m = load_manifest(tiny_export("animatediff"))
    unet = shape_profile(m.component("unet"))
    assert unet["sample"].min == (1, 4, 4, 4, 4) and unet["sample"].max == (2, 4, 16, 8, 8)
    assert unet["sample"].opt == (2, 4, 8, 6, 6) and unet["timestep"].max == (2,)
    encoder = shape_profile(m.component("vae_encoder"))  # pixels derived from latents: 8 x
    assert encoder["sample"].min == (1, 3, 32, 32) and encoder["sample"].max == (16, 3, 64, 64)
