"""wan-animate-pose's stand-in graphs (WAN_PREPROCESS.md 2, 3, 12): the real files' IO, outputs that
follow the pixels (people at white blobs, a coloured class-1 blob, keypoints at the crop's bright
part), the -1 decode path, batch independence, and save_graph (tiny graphs only; the bench size is
checked by hand)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from zoo.families.wan_animate_pose import standins
from zoo.families.wan_animate_pose.standins import detector_graph, save_graph, vitpose_graph


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def detector() -> ort.InferenceSession:
    return _session(detector_graph(0))


@pytest.fixture(scope="module")
def vitpose() -> ort.InferenceSession:
    return _session(vitpose_graph(0))


def _frame(h: int = 720, w: int = 1280) -> np.ndarray:
    """An RGB frame with a dim noisy background."""
    return np.random.default_rng(3).integers(0, 90, (h, w, 3)).astype(np.uint8)


def _detect(session: ort.InferenceSession, rgb: np.ndarray) -> np.ndarray:
    """The detector's rows for an RGB frame, fed as 2.2 says (stretch to 640, /255, CHW)."""
    x = (cv2.resize(rgb, (640, 640)) / 255.0).astype(np.float32).transpose(2, 0, 1)[None]
    out = session.run(None, {"images": x})[0]
    assert out.shape == (1, 300, 6) and out.dtype == np.float32
    return out[0]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


def _in_640(x1: int, y1: int, x2: int, y2: int, h: int = 720, w: int = 1280) -> np.ndarray:
    """A frame-pixel box in the detector's 640x640 input pixels."""
    return np.array([x1 * 640 / w, y1 * 640 / h, x2 * 640 / w, y2 * 640 / h])


def _crop(x0: int, y0: int, w: int, h: int, value: int = 255, background: int = 30) -> np.ndarray:
    """A ViTPose feed: a BGR 256x192 crop (a flat background, a rectangle of ``value``) normalised
    per channel index with ImageNet's RGB statistics (3.3)."""
    bgr = np.full((256, 192, 3), background, np.uint8)
    bgr[y0 : y0 + h, x0 : x0 + w] = value
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = ((bgr / np.float32(255)).astype(np.float32).astype(np.float64) - mean) / std
    return x.astype(np.float32).transpose(2, 0, 1)[None]


def _peaks(heat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per keypoint: maximum, argmax column, argmax row (3.4 step 1)."""
    flat = heat.reshape(133, -1)
    index = flat.argmax(axis=1)
    return flat.max(axis=1), index % 48, index // 48


# --------------------------------------------------------------------------------------
# Graph, names, shapes, determinism
# --------------------------------------------------------------------------------------


def test_graphs_check_and_carry_the_real_io() -> None:
    for model, name, shape, out, out_shape in (
        (detector_graph(0), "images", [1, 3, 640, 640], "output0", [1, 300, 6]),
        (vitpose_graph(0), "input", [1, 3, 256, 192], "output", [1, 133, 64, 48]),
    ):
        onnx.checker.check_model(model, full_check=True)
        (i,), (o,) = model.graph.input, model.graph.output
        assert (i.name, o.name) == (name, out)
        assert [d.dim_value for d in i.type.tensor_type.shape.dim] == shape
        assert [d.dim_value for d in o.type.tensor_type.shape.dim] == out_shape
        assert i.type.tensor_type.elem_type == o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert model.opset_import[0].version == 17 and model.ir_version == 8


def test_seeded_and_deterministic() -> None:
    assert detector_graph(0).SerializeToString() == detector_graph(0).SerializeToString()
    assert vitpose_graph(3).SerializeToString() == vitpose_graph(3).SerializeToString()
    assert detector_graph(0).SerializeToString() != detector_graph(1).SerializeToString()
    assert vitpose_graph(0).SerializeToString() != vitpose_graph(1).SerializeToString()
    with pytest.raises(ValueError, match="size"):
        vitpose_graph(0, size="huge")


# --------------------------------------------------------------------------------------
# Detector (2.3-2.6)
# --------------------------------------------------------------------------------------


def test_white_blob_is_the_top_person_row(detector: ort.InferenceSession) -> None:
    rgb = _frame()
    rgb[100:600, 300:500] = 255
    rows = _detect(detector, rgb)
    assert np.all(np.diff(rows[:, 4]) <= 0)  # sorted by score, like YOLOv10's export
    blob = _in_640(300, 100, 500, 600)
    top = rows[0]
    assert top[5] == 0.0 and top[4] > 0.5
    assert _iou(top[:4], blob) > 0.9
    # duplicates: more rows on the blob with lower scores, and NMS (cv2, 2.5) keeps one
    on_blob = [r for r in rows if r[4] > 0.05 and _iou(r[:4], blob) > 0.5]
    assert len(on_blob) >= 5 and all(r[4] <= top[4] for r in on_blob)
    assert len({tuple(r[:4]) for r in on_blob}) == len(on_blob)  # jittered, not copies
    boxes = [[int(r[0]), int(r[1]), int(r[2] - r[0]), int(r[3] - r[1])] for r in rows]
    kept = cv2.dnn.NMSBoxes(boxes, [float(r[4]) for r in rows], 0.05, 0.5)
    assert list(kept) == [0]
    # every row off the blob scores below the threshold
    assert all(r[4] < 0.05 for r in rows if _iou(r[:4], blob) == 0)


def test_moving_the_blob_moves_the_box(detector: ort.InferenceSession) -> None:
    tops = []
    for x in (200, 520, 840):
        rgb = _frame()
        rgb[150:650, x : x + 240] = 255
        tops.append(_detect(detector, rgb)[0])
        assert _iou(tops[-1][:4], _in_640(x, 150, x + 240, 650)) > 0.85
    shifts = np.diff([t[0] + t[2] for t in tops]) / 2  # the box centre, 640-input pixels
    assert shifts == pytest.approx([160.0, 160.0], abs=6.0)  # 320 frame pixels = 160 input pixels


def test_coloured_blob_is_class_one_and_persons_stay_class_zero(detector: ort.InferenceSession) -> None:
    rgb = _frame()
    rgb[80:640, 150:400] = 240
    rgb[200:420, 800:1100] = (230, 30, 20)  # a saturated red object
    rows = _detect(detector, rgb)
    person, thing = _in_640(150, 80, 400, 640), _in_640(800, 200, 1100, 420)
    best_thing = max((r for r in rows if r[5] == 1.0), key=lambda r: r[4])
    assert best_thing[4] > 0.3 and _iou(best_thing[:4], thing) > 0.7
    assert all(r[5] == 0.0 for r in rows if r[4] > 0.05 and _iou(r[:4], person) > 0.5)
    assert set(np.unique(rows[:, 5]).tolist()) <= {0.0, 1.0}
    boxes = [[int(r[0]), int(r[1]), int(r[2] - r[0]), int(r[3] - r[1])] for r in rows]
    kept = rows[list(cv2.dnn.NMSBoxes(boxes, [float(r[4]) for r in rows], 0.05, 0.5))]
    assert sorted(kept[:, 5].tolist()) == [0.0, 1.0]


def test_dark_image_has_no_detection_and_dimmer_people_score_lower(detector: ort.InferenceSession) -> None:
    assert _detect(detector, _frame())[:, 4].max() < 0.05
    scores = []
    for value in (255, 200, 170):
        rgb = _frame()
        rgb[100:600, 300:500] = value
        scores.append(_detect(detector, rgb)[0, 4])
    assert scores[0] > scores[1] > scores[2] > 0.05


# --------------------------------------------------------------------------------------
# ViTPose (3.3, 3.4)
# --------------------------------------------------------------------------------------


def test_heatmap_peaks_follow_the_crop(vitpose: ort.InferenceSession) -> None:
    here = vitpose.run(None, {"input": _crop(19, 26, 150, 200)})[0]
    assert here.shape == (1, 133, 64, 48) and here.dtype == np.float32
    there = vitpose.run(None, {"input": _crop(27, 18, 150, 200)})[0]  # 8 px right, 8 up: 2 cells each
    m0, x0, y0 = _peaks(here[0])
    m1, x1, y1 = _peaks(there[0])
    inside = (m0 > 0) & (x0 >= 2) & (x0 <= 45) & (y0 >= 2) & (y0 <= 61)
    assert inside.sum() > 100
    assert np.mean((x1 - x0)[inside] == 2) > 0.9 and np.all(np.abs(x1 - x0 - 2)[inside] <= 1)
    assert np.mean((y1 - y0)[inside] == -2) > 0.9 and np.all(np.abs(y1 - y0 + 2)[inside] <= 1)
    # a body-like layout: nose (wb 0) above the hips (11, 12) above the ankles (15, 16)
    assert y0[0] < y0[11] < y0[15] and y0[0] < y0[12] < y0[16]
    # a real peak for the DARK step: the 5x5 cells round each maximum above 0.1 all positive
    for k in np.flatnonzero(inside & (m0 > 0.1)):
        window = here[0, k, y0[k] - 2 : y0[k] + 3, x0[k] - 2 : x0[k] + 3]
        assert window.min() > 0.2 * m0[k]


def test_scores_follow_the_content_and_cross_the_thresholds(vitpose: ort.InferenceSession) -> None:
    maxima = [_peaks(vitpose.run(None, {"input": _crop(19, 26, 154, 205, value)})[0][0])[0] for value in (255, 180)]
    lit = maxima[0] > 0
    assert lit.sum() > 120 and np.all(maxima[0][lit] > maxima[1][lit])
    crossing = (maxima[0] > 0.5) & (maxima[1] < 0.4)
    assert crossing.sum() >= 5
    # the -1 path (3.4 step 1): some keypoints all <= 0 on the dimmer person, not on the bright one
    negative = maxima[1] <= 0
    assert 1 <= negative.sum() <= 20 and negative.sum() > (maxima[0] <= 0).sum()
    assert not np.any(negative[23:91])  # never the face
    # a crop without bright pixels: every heatmap all negative
    dark = vitpose.run(None, {"input": _crop(0, 0, 0, 0)})[0]
    assert dark.max() < 0


def test_a_batch_equals_its_items(tmp_path: Path) -> None:
    model = vitpose_graph(0)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    session = _session(model)
    items = [_crop(19, 26, 154, 205), _crop(50, 70, 60, 120, 200)]
    batch = session.run(None, {"input": np.concatenate(items)})[0]
    one_by_one = np.concatenate([session.run(None, {"input": x})[0] for x in items])
    assert batch.shape == (2, 133, 64, 48)
    assert np.array_equal(batch, one_by_one)


# --------------------------------------------------------------------------------------
# save_graph
# --------------------------------------------------------------------------------------


def test_save_graph_plain_and_with_external_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detector: ort.InferenceSession
) -> None:
    model = vitpose_graph(0)
    plain = tmp_path / "vitpose_h_wholebody.onnx"
    save_graph(model, plain)
    assert not (tmp_path / "vitpose_h_wholebody.onnx.data").exists()
    assert onnx.load(str(plain)).SerializeToString() == model.SerializeToString()

    monkeypatch.setattr(standins, "EXTERNAL_DATA_ABOVE", 0)  # what a model above 1.8 GB gets
    rgb = _frame()
    rgb[100:600, 300:500] = 255
    path = tmp_path / "yolov10m.onnx"
    data = tmp_path / "yolov10m.onnx.data"
    data.write_bytes(b"stale")  # replaced, not appended to
    save_graph(detector_graph(0), path)
    assert data.stat().st_size > 4 * 20 * 640 and not data.read_bytes().startswith(b"stale")
    loaded = onnx.load(str(path), load_external_data=False)
    external = [t for t in loaded.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external and all(dict((e.key, e.value) for e in t.external_data)["location"] == data.name for t in external)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert np.array_equal(_detect(session, rgb), _detect(detector, rgb))
