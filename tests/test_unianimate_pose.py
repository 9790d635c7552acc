"""unianimate-pose: a family of imported graphs (the pose step's person detector and whole-body
pose model, given as ONNX files). What the conformance battery does not cover: both ways of giving
the files, the check of a given graph against the declaration (a typed error naming the file, the
tensor and both shapes, nothing written), the sources' hashes, parity against the source graph (and
a wrong copy failing it), stand-ins whose outputs follow the image, and the batch decision."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import assert_error, perturb_graph, zoo
from onnx import TensorProto, helper

from exporters.imported import ImportedGraphError
from exporters.manifest import load_manifest
from zoo.contract import REFERENCE_SOURCE_GRAPH, REFERENCE_TORCH, Component, ImportedGraph, specs
from zoo.families.unianimate_pose.family import (
    DETECTOR_FILE,
    POSE_MEAN,
    POSE_MODEL_FILE,
    POSE_STD,
    detector_graph,
    pose_graph,
)
from zoo.infra.checkpoint import content_hash
from zoo.infra.hashing import file_sha256

FAMILY = "unianimate-pose"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """`zoo random unianimate-pose`: the original's checkpoint folder with the two stand-ins."""
    out = tmp_path_factory.mktemp("pose-random") / "random"
    result = zoo("random", FAMILY, "--out", out)
    assert result.exit_code == 0, result.output
    folder = out / "model"
    assert f"zoo export {FAMILY} --model {folder}" in result.output
    assert (folder / DETECTOR_FILE).is_file() and (folder / POSE_MODEL_FILE).is_file()
    return folder


@pytest.fixture(scope="module")
def model_export(stand_ins, tmp_path_factory):
    out = tmp_path_factory.mktemp("pose-export") / "export"
    result = zoo("export", FAMILY, "--model", stand_ins, "--out", out)
    assert result.exit_code == 0, result.output
    return out, result.output


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


# --------------------------------------------------------------------------------------
# Export: from the checkpoint folder, and file by file
# --------------------------------------------------------------------------------------


def test_export_from_the_checkpoint_folder_records_both_files_hashed(stand_ins, model_export):
    out, printed = model_export
    manifest = load_manifest(out)
    assert manifest.family == FAMILY and set(manifest.components) == {"detector", "pose_model"}
    # the two files are the sources (not the folder): role, path, content hash, each file's sha256
    by_role = {s["role"]: s for s in manifest.sources}
    assert set(by_role) == {"detector", "pose_model"}
    for role, name in (("detector", DETECTOR_FILE), ("pose_model", POSE_MODEL_FILE)):
        source = by_role[role]
        assert Path(source["path"]) == (stand_ins / name).resolve()
        assert source["hash"] == content_hash(stand_ins / name)
        assert source["files"] == {name: file_sha256(stand_ins / name)}
        record = manifest.components[role]
        assert record.imported["source"] == role and record.imported["file"] == name
        assert record.imported["sha256"] == file_sha256(stand_ins / name)
        assert record.imported["reference"] == REFERENCE_SOURCE_GRAPH
        assert (out / record.file).is_file() and record.opset == 17 and record.precision == "float32"
    detector, pose = manifest.components["detector"], manifest.components["pose_model"]
    assert [(t.name, t.dtype, t.shape) for t in detector.inputs] == [("images", "float32", (1, 3, 640, 640))]
    assert [(t.name, t.dtype, t.shape) for t in detector.outputs] == [("output", "float32", (1, 8400, 85))]
    assert [(t.name, t.shape) for t in pose.inputs] == [("input", ("batch", 3, 384, 288))]
    assert [(t.name, t.shape) for t in pose.outputs] == [
        ("simcc_x", ("batch", 133, 576)),
        ("simcc_y", ("batch", 133, 768)),
    ]
    assert "made symbolic" in printed  # the batch decision is said where the export is reported
    # the copies keep the given graphs' computation: same nodes, same weights
    for role, name in (("detector", DETECTOR_FILE), ("pose_model", POSE_MODEL_FILE)):
        given, copy = onnx.load(str(stand_ins / name)), onnx.load(str(out / role / "model.onnx"))
        assert [n.op_type for n in given.graph.node] == [n.op_type for n in copy.graph.node]
        assert [t.raw_data for t in given.graph.initializer] == [t.raw_data for t in copy.graph.initializer]


def test_export_file_by_file_gives_the_same_graphs(stand_ins, model_export, tmp_path):
    out = tmp_path / "export"
    result = zoo(
        "export",
        FAMILY,
        "--detector",
        stand_ins / DETECTOR_FILE,
        "--pose-model",
        stand_ins / POSE_MODEL_FILE,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    mine, theirs = load_manifest(out), load_manifest(model_export[0])
    assert mine.sources == theirs.sources
    for name in ("detector", "pose_model"):
        assert mine.components[name].sha256 == theirs.components[name].sha256
    assert not (out / "reference").exists()  # a user's files are recorded, not copied


def test_a_given_file_overrides_the_folders_and_a_missing_one_is_named(stand_ins, tmp_path):
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(stand_ins / DETECTOR_FILE, half)
    result = zoo("export", FAMILY, "--model", half, "--out", tmp_path / "a")
    assert_error(result, f"checkpoint folder {half} has no {POSE_MODEL_FILE}")
    result = zoo("export", FAMILY, "--detector", half / DETECTOR_FILE, "--out", tmp_path / "b")
    assert_error(result, f"needs the pose model graph: give --pose-model FILE ({POSE_MODEL_FILE})")
    result = zoo("export", FAMILY, "--out", tmp_path / "c")
    assert_error(result, "give exactly one of --model PATH (a local checkpoint folder), its files (--detector")
    out = tmp_path / "d"
    result = zoo("export", FAMILY, "--model", half, "--pose-model", stand_ins / POSE_MODEL_FILE, "--out", out)
    assert result.exit_code == 0, result.output
    assert {s["role"]: Path(s["path"]) for s in load_manifest(out).sources} == {
        "detector": (half / DETECTOR_FILE).resolve(),
        "pose_model": (stand_ins / POSE_MODEL_FILE).resolve(),
    }
    assert not any((tmp_path / n).exists() for n in "abc")


def test_tiny_export_carries_its_stand_ins_and_passes_parity(tmp_path):
    out = tmp_path / "export"
    result = zoo("export", FAMILY, "--tiny", "--out", out)
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert [s["path"] for s in manifest.sources] == [
        f"reference/detector/{DETECTOR_FILE}",
        f"reference/pose_model/{POSE_MODEL_FILE}",
    ]
    result = zoo("parity", out)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------------
# A given graph that is not what the component declares: refused before anything is written
# --------------------------------------------------------------------------------------


def _with_input(model, *, name=None, shape=None, dtype=None):
    """The stand-in with its (only) input renamed, reshaped or retyped (a Cast keeps it runnable)."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    value = changed.graph.input[0]
    old = value.name
    if name is not None:
        for node in changed.graph.node:
            node.input[:] = [name if i == old else i for i in node.input]
        value.name = name
    if shape is not None:
        del value.type.tensor_type.shape.dim[:]
        value.type.tensor_type.shape.dim.extend(
            [
                helper.make_tensor_value_info("x", TensorProto.FLOAT, shape).type.tensor_type.shape.dim[i]
                for i in range(len(shape))
            ]
        )
    if dtype is not None:
        value.type.tensor_type.elem_type = dtype
        cast = helper.make_node("Cast", [old], [old + "_f32"], to=TensorProto.FLOAT)
        for node in changed.graph.node:
            node.input[:] = [old + "_f32" if i == old else i for i in node.input]
        changed.graph.node.insert(0, cast)
    return changed


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"name": "image"},
            "component 'pose_model' declares inputs input FLOAT [batch=1..16, 3, 384, 288]; the graph's inputs are "
            "image FLOAT [1, 3, 384, 288]",
        ),
        (
            {"shape": [1, 3, 384]},
            "input 'input' of component 'pose_model' is FLOAT [1, 3, 384] in the graph; the declaration says "
            "FLOAT [batch=1..16, 3, 384, 288] (rank 3, declared 4)",
        ),
        (
            {"shape": [1, 3, 256, 192]},
            "input 'input' of component 'pose_model' is FLOAT [1, 3, 256, 192] in the graph; the declaration says "
            "FLOAT [batch=1..16, 3, 384, 288] (dim 2 is 256, declared 384)",
        ),
        (
            {"dtype": TensorProto.FLOAT16},
            "input 'input' of component 'pose_model' is FLOAT16 [1, 3, 384, 288] in the graph; the declaration says "
            "FLOAT [batch=1..16, 3, 384, 288] (dtype differs)",
        ),
    ],
    ids=["name", "rank", "shape", "dtype"],
)
def test_a_graph_with_the_wrong_input_is_refused_naming_file_tensor_and_both_shapes(
    stand_ins, tmp_path, change, message
):
    bad = _save(_with_input(pose_graph(0), **change), tmp_path / "bad_pose.onnx")
    out = tmp_path / "new" / "export"
    result = zoo("export", FAMILY, "--detector", stand_ins / DETECTOR_FILE, "--pose-model", bad, "--out", out)
    assert_error(result, f"{bad}: {message}")
    assert not (tmp_path / "new").exists()  # nothing written, not even the parent folder


def test_the_wrong_output_and_swapped_files_are_refused(stand_ins, tmp_path):
    model = pose_graph(0)
    model.graph.output[1].type.tensor_type.shape.dim[2].dim_value = 384
    bad = _save(model, tmp_path / "bad_pose.onnx")
    result = zoo(
        "export", FAMILY, "--detector", stand_ins / DETECTOR_FILE, "--pose-model", bad, "--out", tmp_path / "a"
    )
    assert_error(
        result,
        f"{bad}: output 'simcc_y' of component 'pose_model' is FLOAT [1, 133, 384] in the graph; the declaration "
        f"says FLOAT [batch=1..16, 133, 768] (dim 2 is 384, declared 768)",
    )
    result = zoo(
        "export",
        FAMILY,
        "--detector",
        stand_ins / POSE_MODEL_FILE,
        "--pose-model",
        stand_ins / DETECTOR_FILE,
        "--out",
        tmp_path / "b",
    )
    assert_error(
        result,
        f"{stand_ins / POSE_MODEL_FILE}: component 'detector' declares inputs images FLOAT [1, 3, 640, 640]; the "
        f"graph's inputs are input FLOAT [1, 3, 384, 288] (is it the right file?)",
    )
    not_onnx = tmp_path / "not.onnx"
    not_onnx.write_bytes(b"\x00not a model")
    result = zoo(
        "export", FAMILY, "--detector", not_onnx, "--pose-model", stand_ins / POSE_MODEL_FILE, "--out", tmp_path / "c"
    )
    assert_error(result, f"component 'detector': {not_onnx} is not a readable ONNX graph")
    assert not any((tmp_path / n).exists() for n in "abc")


def test_the_typed_error_is_an_imported_graph_error(stand_ins, tmp_path):
    from exporters.onnx import export_family
    from zoo.registry import get_family

    family = get_family(FAMILY)
    bad = _save(_with_input(detector_graph(0), shape=[1, 3, 320, 320]), tmp_path / "det.onnx")
    ref = family.load((_source("detector", bad), _source("pose_model", stand_ins / POSE_MODEL_FILE)))
    with pytest.raises(ImportedGraphError, match=r"dim 2 is 320, declared 640"):
        export_family(family, ref, family.envelope(ref), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def _source(role, path):
    from zoo.contract import Source

    return Source(role, Path(path))


# --------------------------------------------------------------------------------------
# Parity: the reference is the source graph on ONNX Runtime CPU
# --------------------------------------------------------------------------------------


def test_parity_compares_the_copy_with_the_source_graph_exactly(model_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(model_export[0], out)
    result = zoo("parity", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") : result.stdout.rindex("}") + 1])
    rows = report["rows"]
    assert {r["component"] for r in rows} == {"detector", "pose_model"}
    assert {r["point"] for r in rows if r["component"] == "pose_model"} == {"opt", "all-min", "all-max", "interior"}
    assert all(r["tolerance"] == "max_abs 0" and r["metrics"]["max_abs"] == 0 for r in rows)
    notes = [n for r in rows for n in r["notes"]]
    assert notes == [f"reference: the given graph ({REFERENCE_SOURCE_GRAPH})"] * 2


def test_a_perturbed_copy_fails_parity(model_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(model_export[0], out)
    perturb_graph(out, "pose_model", lambda w: w * (1 + 1e-6))  # the keypoint priors, by one part in a million
    result = zoo("parity", out)
    assert result.exit_code == 2, result.output
    assert "parity failed" in result.output and "pose_model" in result.output
    failed = [line for line in result.output.splitlines() if "pose_model" in line and " FAIL" in line.upper()]
    assert failed, result.output


def test_the_source_graph_changed_after_export_is_refused(stand_ins, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(stand_ins, folder)
    out = tmp_path / "export"
    assert zoo("export", FAMILY, "--model", folder, "--out", out).exit_code == 0
    _save(pose_graph(1), folder / POSE_MODEL_FILE)  # another seed: another graph
    result = zoo("parity", out)
    assert_error(result, f"the pose_model source {(folder / POSE_MODEL_FILE).resolve()} changed since the export")


def test_the_contract_says_which_reference_a_component_has():
    from zoo.registry import get_family

    family = get_family(FAMILY)
    assert {c.name: c.reference_kind for c in family.components} == {
        "detector": REFERENCE_SOURCE_GRAPH,
        "pose_model": REFERENCE_SOURCE_GRAPH,
    }
    assert get_family("transformer-temporal").components[0].reference_kind == REFERENCE_TORCH
    common = dict(tolerance="pose_estimator", module="m", inputs=specs(), outputs=specs(), dims=lambda env, ref: {})
    with pytest.raises(TypeError, match="declares its wrapper and its reference call"):
        Component(name="c", **common)
    with pytest.raises(TypeError, match="an imported graph has no wrapper"):
        Component(name="c", wrapper=lambda ref: None, graph=ImportedGraph("pose_model"), **common)


def test_zoo_run_refuses_and_bench_times_the_source_graph(model_export):
    out = model_export[0]
    result = zoo("run", out, "--out", out.parent / "x.png")
    assert_error(result, "family 'unianimate-pose' has no sampler")
    from runtimes.backends import SourceGraphBackend, TorchBackend, reference_backend

    manifest = load_manifest(out)
    assert isinstance(reference_backend(manifest, "pose_model"), SourceGraphBackend)
    with pytest.raises(Exception, match="is an imported ONNX graph: it has no torch reference"):
        TorchBackend(manifest, "pose_model").activate()


def test_build_dry_run_bounds_the_pose_models_batch(model_export):
    out = model_export[0]
    result = zoo("build", out, "--dry-run")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("trtexec ")]
    assert len(lines) == 2
    assert "--minShapes" not in lines[0]  # the detector is static: 1x3x640x640
    assert "--minShapes=input:1x3x384x288 --optShapes=input:4x3x384x288 --maxShapes=input:16x3x384x288" in lines[1]
    assert "# pose_model (float32, opset 17: TensorRT 10.1+): batch 1:4:16" in result.output


@pytest.mark.tensorrt
def test_engines_build_and_match_the_source_graph_on_tensorrt(model_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(model_export[0], out)
    result = zoo("build", out)
    assert result.exit_code == 0, result.output
    result = zoo("parity", out, "--backend", "tensorrt")
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------------------------
# The stand-ins: outputs that follow the image
# --------------------------------------------------------------------------------------


def _letterboxed(blobs, background=10.0):
    """A 640x480 BGR image (background ``background``) in a 114 letterbox, with (y0, y1, x0, x1, bgr) blobs."""
    image = np.full((1, 3, 640, 640), 114.0, np.float32)
    image[:, :, :480, :] = background
    for y0, y1, x0, x1, bgr in blobs:
        image[0, :, y0:y1, x0:x1] = np.asarray(bgr, np.float32).reshape(3, 1, 1)
    return image


def _people(output, threshold=0.3):
    """Decoded boxes (x1, y1, x2, y2) and scores of class 0 above ``threshold``, best first (POSE.md 1.3)."""
    boxes, scores, start = [], [], 0
    for s in (8, 16, 32):
        cells = 640 // s
        o = output[0, start : start + cells * cells].reshape(cells, cells, 85).astype(np.float64)
        start += cells * cells
        gy, gx = np.mgrid[0:cells, 0:cells]
        cx, cy = (o[..., 0] + gx) * s, (o[..., 1] + gy) * s
        w, h = np.exp(o[..., 2]) * s, np.exp(o[..., 3]) * s
        score = o[..., 4] * o[..., 5]
        keep = score > threshold
        boxes += list(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)[keep])
        scores += list(score[keep])
    order = np.argsort(scores)[::-1]
    return [boxes[i] for i in order], [scores[i] for i in order]


def test_the_detector_stand_in_finds_bright_blobs_where_they_are():
    detector = _session(detector_graph(0))
    run = lambda image: detector.run(None, {"images": image})[0]  # noqa: E731
    white = (230, 230, 230)
    for y0, y1, x0, x1 in ((100, 350, 200, 300), (200, 440, 380, 480)):
        boxes, scores = _people(run(_letterboxed([(y0, y1, x0, x1, white)])))
        assert scores and scores[0] > 0.5
        best = boxes[0]  # the best box is the blob's, within a few pixels
        assert np.allclose(best, (x0, y0, x1, y1), atol=6), (best, (x0, y0, x1, y1))
    # no blob: no person (the pose step's whole-image fallback); the 114 letterbox is never one
    assert _people(run(_letterboxed([])), 0.1) == ([], [])
    # a saturated blob is an object of another class: dropped by the person filter
    red = run(_letterboxed([(100, 300, 100, 200, (20, 20, 240))]))
    assert _people(red, 0.1) == ([], []) and float((red[0, :, 4] * red[0, :, 6]).max()) > 0.5
    # channel order matters: the same blob in RGB gives other outputs
    image = _letterboxed([(100, 300, 100, 200, (200, 180, 240))])
    assert not np.array_equal(run(image), run(image[:, ::-1].copy()))
    # and the letterbox padding matters: 114 against 0 changes outputs
    padded = _letterboxed([(100, 350, 200, 300, white)])
    zero = padded.copy()
    zero[:, :, 480:, :] = 0
    assert not np.array_equal(run(padded), run(zero))


def _crop(bright=None, value=240.0, background=20.0):
    """A normalised 384x288 BGR crop (POSE.md 2.4), bright where ``bright`` (y0, y1, x0, x1) says."""
    image = np.full((3, 384, 288), background)
    if bright is not None:
        y0, y1, x0, x1 = bright
        image[:, y0:y1, x0:x1] = value
    mean, std = np.array(POSE_MEAN).reshape(3, 1, 1), np.array(POSE_STD).reshape(3, 1, 1)
    return ((image - mean) / std).astype(np.float32)[None]


def test_the_pose_stand_in_follows_the_crops_content():
    pose = _session(pose_graph(0))

    def keypoints(crop):
        x, y = pose.run(None, {"input": crop})
        return x[0].argmax(-1), y[0].argmax(-1), np.minimum(x[0].max(-1), y[0].max(-1))

    px, py, person = keypoints(_crop((40, 360, 60, 230)))  # a person filling the crop
    dx, dy, dark = keypoints(_crop())
    # scores spread around the 0.3 thresholds on a person, some maxima non-positive; a dark crop scores low
    assert (person > 0.3).sum() > 60 and ((person > 0.2) & (person < 0.4)).sum() >= 5 and (person <= 0).sum() >= 1
    assert (dark <= 0).sum() > 60 and (dark > 0.3).sum() == 0
    # the keypoints move with the content: the person shifted right pulls the peaks left of it right
    sx, sy, _ = keypoints(_crop((40, 360, 120, 288)))
    assert (sx[:17] >= px[:17]).all() and (sx[:17] > px[:17]).sum() >= 5 and (sx[:17] >= 240).sum() >= 5
    # and channel order matters (BGR fed as RGB changes the outputs)
    crop = _crop((40, 360, 60, 230))
    assert not np.array_equal(pose.run(None, {"input": crop})[0], pose.run(None, {"input": crop[:, ::-1].copy()})[0])
    # deterministic: the same seed writes the same bytes, another seed another graph
    assert pose_graph(0).SerializeToString() == pose_graph(0).SerializeToString()
    assert detector_graph(3).SerializeToString() == detector_graph(3).SerializeToString()
    assert pose_graph(0).SerializeToString() != pose_graph(1).SerializeToString()


# --------------------------------------------------------------------------------------
# The batch decision
# --------------------------------------------------------------------------------------


def test_the_stand_ins_batch_is_made_dynamic_and_equals_crops_run_alone(model_export):
    out = model_export[0]
    record = load_manifest(out).components["pose_model"]
    assert record.dims["batch"].is_dynamic and (record.dims["batch"].min, record.dims["batch"].max) == (1, 16)
    assert record.imported["batch"]["dynamic"] is True
    assert "batches of 2 and 16" in record.imported["batch"]["why"]
    graph = onnx.load(str(out / "pose_model" / "model.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    copy = ort.InferenceSession(str(out / "pose_model" / "model.onnx"), providers=["CPUExecutionProvider"])
    crops = np.concatenate([_crop((40, 360, 60, 230)), _crop((0, 200, 0, 288)), _crop()])
    together = copy.run(None, {"input": crops})
    for i in range(3):
        alone = copy.run(None, {"input": crops[i : i + 1]})
        assert all(np.array_equal(t[i : i + 1], a) for t, a in zip(together, alone))


def _mixing_batches(model):
    """The pose stand-in plus a term computed across the batch (its mean over every crop), so a
    batch is not its crops run alone."""
    mixed = onnx.ModelProto()
    mixed.CopyFrom(model)
    graph = mixed.graph
    for node in graph.node:
        node.output[:] = [o + "_own" if o in ("simcc_x", "simcc_y") else o for o in node.output]
    graph.node.append(helper.make_node("ReduceMean", ["input"], ["mean_all"], keepdims=0))
    graph.node.append(helper.make_node("Mul", ["mean_all", "tiny_gain"], ["mean_term"]))
    graph.initializer.append(helper.make_tensor("tiny_gain", TensorProto.FLOAT, [], [1e-3]))
    for name in ("simcc_x", "simcc_y"):
        graph.node.append(helper.make_node("Add", [name + "_own", "mean_term"], [name]))
    return mixed


def test_a_graph_mixing_its_batch_keeps_batch_1_and_says_why(stand_ins, tmp_path, caplog):
    mixing = _save(_mixing_batches(pose_graph(0)), tmp_path / "mixing.onnx")
    out = tmp_path / "export"
    result = zoo("export", FAMILY, "--detector", stand_ins / DETECTOR_FILE, "--pose-model", mixing, "--out", out)
    assert result.exit_code == 0, result.output
    record = load_manifest(out).components["pose_model"]
    assert not record.dims["batch"].is_dynamic and record.dims["batch"].min == 1
    decision = record.imported["batch"]
    assert decision["dynamic"] is False
    assert decision["why"].startswith("the given graph fixes batch to 1 and does not compute batch items on their own")
    assert "differs from its run alone" in decision["why"] and decision["why"].endswith("kept at 1")
    assert decision["why"] in result.output
    graph = onnx.load(str(out / "pose_model" / "model.onnx"))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    dry = zoo("build", out, "--dry-run")
    assert dry.exit_code == 0 and "--minShapes" not in dry.output  # both engines static
    result = zoo("parity", out)
    assert result.exit_code == 0, result.output


def test_manifests_without_the_imported_field_still_load(model_export, tmp_path):
    out = tmp_path / "export"
    shutil.copytree(model_export[0], out)
    data = json.loads((out / "manifest.json").read_text())
    for record in data["components"].values():
        del record["imported"]
    (out / "manifest.json").write_text(json.dumps(data))
    manifest = load_manifest(out)
    assert all(r.imported is None for r in manifest.components.values())
    assert "imported" not in manifest.components["detector"].to_json()


def test_sample_feeds_look_like_the_pose_steps():
    from zoo.registry import get_family

    family = get_family(FAMILY)
    images = family.component("detector").sample_inputs(None, {}, seed=0)["images"]
    assert images.shape == (1, 3, 640, 640) and images.dtype == torch.float32
    assert 0 <= float(images.min()) and float(images.max()) <= 255 and (images == 114).any()
    crops = family.component("pose_model").sample_inputs(None, {"batch": 2}, seed=0)["input"]
    assert crops.shape == (2, 3, 384, 288) and not torch.equal(crops[0], crops[1])
