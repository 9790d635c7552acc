"""wan-animate-pose REPLACE masks (WAN_PREPROCESS.md 8.2 items 5-8, 10.1-10.2): dilation and grid
fill against an independent loop implementation, background / mask frames, SAM2 prompts and chunks,
and the transformers SAM2 video run on a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import CheckpointError
from zoo.families.wan_animate_pose import masks as M
from zoo.families.wan_animate_pose.meta import Meta


def ref_dilate(mask: np.ndarray, k: int, iterations: int) -> np.ndarray:
    """Binary dilation by a k x k block, anchor at (k // 2, k // 2), outside pixels never count."""
    out = mask.copy()
    h, w = mask.shape
    a = k // 2
    for _ in range(iterations):
        src = out.copy()
        for y in range(h):
            for x in range(w):
                y0, y1 = max(y - a, 0), min(y - a + k, h)
                x0, x1 = max(x - a, 0), min(x - a + k, w)
                out[y, x] = 1 if src[y0:y1, x0:x1].max(initial=0) > 0 else 0
    return out


def ref_grid(mask: np.ndarray, w_len: int, h_len: int) -> np.ndarray:
    """Per pixel: the cell a pixel of [y_min, y_max) x [x_min, x_max) falls in; cells with a nonzero pixel fill."""
    out = mask.copy()
    ys, xs = np.nonzero(mask)
    x_min, x_max, y_min, y_max = xs.min(), xs.max(), ys.min(), ys.max()
    sw, sh = (x_max - x_min) // w_len, (y_max - y_min) // h_len
    hit = set()
    for y in range(y_min, y_max):
        for x in range(x_min, x_max):
            if mask[y, x]:
                hit.add(((x - x_min) // sw, (y - y_min) // sh))
    for y in range(y_min, y_max):
        for x in range(x_min, x_max):
            if ((x - x_min) // sw, (y - y_min) // sh) in hit:
                out[y, x] = 1
    return out


@pytest.mark.parametrize(
    ("seed", "k", "iterations", "w_len", "h_len"),
    [(0, 7, 3, 1, 1), (1, 3, 1, 2, 3), (2, 4, 2, 3, 2), (3, 5, 1, 5, 4), (4, 1, 1, 2, 2)],
)
def test_dilate_and_fill_matches_loops(seed: int, k: int, iterations: int, w_len: int, h_len: int) -> None:
    rng = np.random.default_rng(seed)
    mask = (rng.random((30, 41)) > 0.985).astype(np.uint8)
    mask[8, 9] = mask[21, 33] = 1  # a box wide and tall enough for every grid here
    before = mask.copy()
    got, warning = M.dilate_and_fill(mask, iterations=iterations, k=k, w_len=w_len, h_len=h_len)
    want = ref_grid(ref_dilate(mask, k, iterations), w_len, h_len)
    assert warning is None
    assert got.dtype == np.uint8 and set(np.unique(got)) <= {0, 1}
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(mask, before)  # the input is not modified


def test_grid_fill_is_end_exclusive() -> None:
    mask = np.zeros((10, 10), np.uint8)
    mask[2, 2] = mask[6, 7] = 1
    got, warning = M.dilate_and_fill(mask, iterations=1, k=1)  # k = 1: dilation changes nothing
    want = np.zeros((10, 10), np.uint8)
    want[2:6, 2:7] = 1  # the box minus its last row (6) and column (7)
    want[6, 7] = 1  # which keep their own values
    assert warning is None
    np.testing.assert_array_equal(got, want)


def test_iterations_zero_is_unchanged() -> None:
    mask = np.zeros((6, 6), np.uint8)
    mask[1, 1] = mask[4, 3] = 1
    got, warning = M.dilate_and_fill(mask, iterations=0)
    np.testing.assert_array_equal(got, mask)
    assert warning is None and got is not mask
    empty, warning = M.dilate_and_fill(np.zeros((6, 6), np.uint8), iterations=0)
    assert warning is None and not empty.any()  # the original does not crash here: no warning


def test_empty_mask_warns_and_keeps_the_frame() -> None:
    got, warning = M.dilate_and_fill(np.zeros((12, 9), np.uint8))
    assert got.shape == (12, 9) and got.dtype == np.uint8 and not got.any()
    assert warning is not None and "no person" in warning and "kept whole" in warning


def test_narrow_box_skips_the_grid() -> None:
    line = np.zeros((10, 10), np.uint8)
    line[2:8, 5] = 1  # width 0 between its extreme pixels: step 0 for any w_len
    got, warning = M.dilate_and_fill(line, iterations=1, k=1)
    np.testing.assert_array_equal(got, line)
    assert warning is not None and "without the grid fill" in warning

    mask = np.zeros((20, 20), np.uint8)
    mask[3, 3] = mask[15, 4] = 1
    got, warning = M.dilate_and_fill(mask, iterations=1, k=3, w_len=5)  # dilated box 3 px wide < 5
    np.testing.assert_array_equal(got, ref_dilate(mask, 3, 1))
    assert warning is not None and "w_len 5" in warning


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="0/1"):
        M.dilate_and_fill(np.full((3, 3), 255, np.uint8))
    with pytest.raises(ValueError, match="w_len"):
        M.dilate_and_fill(np.zeros((3, 3), np.uint8), w_len=0)


def test_background_and_mask_frame() -> None:
    frame = (np.arange(2 * 3 * 3).reshape(2, 3, 3) + 100).astype(np.uint8)
    mask = np.array([[0, 1, 0], [1, 1, 0]], np.uint8)
    bg = M.background(frame, mask)
    want = frame.copy()
    want[0, 1] = want[1, 0] = want[1, 1] = 0
    assert bg.dtype == np.uint8
    np.testing.assert_array_equal(bg, want)
    mf = M.mask_frame(mask)
    assert mf.shape == (2, 3, 3) and mf.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(mf[:, :, c], [[0, 255, 0], [255, 255, 0]])


def test_read_mask_video() -> None:
    frame = np.zeros((1, 4, 3), np.uint8)
    frame[0, :, 0] = [0, 127, 128, 255]
    frame[0, :, 1] = [255, 255, 0, 0]  # other channels are ignored
    (got,) = M.read_mask_video([frame])
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, [[0, 0, 1, 1]])


def make_meta(width: int, height: int, value: float) -> Meta:
    body = np.zeros((20, 3), np.float32)
    body[:, 0] = value + np.arange(20, dtype=np.float32) / 100
    body[:, 1] = value / 2
    body[:, 2] = 0.1  # scores are not looked at
    z = np.zeros((21, 3), np.float32)
    return Meta(width, height, body, z, z.copy(), np.zeros((69, 3), np.float32))


@pytest.mark.parametrize(
    ("n", "keys"), [(10, [0, 2, 4, 6, 8]), (6, [0, 1, 2, 3, 4, 5]), (4, [0]), (8, [0, 2, 4, 6]), (1, [0])]
)
def test_sam2_key_frames(n: int, keys: list[int]) -> None:
    metas = [make_meta(100, 50, i / 10) for i in range(n)]
    assert [k for k, _ in M.sam2_prompts(metas)] == keys


def test_sam2_points() -> None:
    metas = [make_meta(100, 50, 0.1 * i) for i in range(6)]
    metas[3].width, metas[3].height = 999, 999  # only the chunk's first size counts
    metas[3].body[0, :2] = [0.7, -0.013]  # float32 0.7 * 100 = 69.99999881 -> 69; -0.65 -> 0 (toward zero)
    prompts = M.sam2_prompts(metas)
    index, points = prompts[3]
    assert index == 3 and len(points) == 8
    assert points[0] == [69, 0]
    body = metas[3].body
    for point, op in zip(points[1:], (1, 2, 5, 8, 11, 10, 13)):
        assert point == [int(float(body[op, 0]) * 100), int(float(body[op, 1]) * 50)]
    assert prompts[0][1][1] == [0, 0]  # float32 0.01 * 100 = 0.99999998 -> 0


def test_chunks() -> None:
    assert M.chunks(401) == [range(0, 400), range(400, 401)]
    assert M.chunks(400) == [range(0, 400)]
    assert M.chunks(5) == [range(0, 5)]
    assert M.chunks(0) == []


@pytest.fixture(scope="module")
def sam2(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    folder = M.random_sam2(tmp_path_factory.mktemp("sam2"), seed=0)
    return M.load_sam2(folder, "cpu")


def video(n: int) -> tuple[list[np.ndarray], list[Meta]]:
    rng = np.random.default_rng(5)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]
    frames = [np.ascontiguousarray(f) for f in frames]
    metas = []
    for i in range(n):
        meta = make_meta(64, 48, 0.2 + 0.05 * i)
        meta.body[:, :2] = rng.random((20, 2), dtype=np.float32)
        metas.append(meta)
    return frames, metas


def test_sam2_masks_tiny_model(sam2: tuple[object, object]) -> None:
    model, processor = sam2
    frames, metas = video(6)
    calls: list[tuple[object, int, list[list[int]]]] = []
    add = processor.add_inputs_to_inference_session  # type: ignore[attr-defined]

    def record(**kwargs: object) -> object:
        calls.append((kwargs["inference_session"], kwargs["frame_idx"], kwargs["input_points"]))  # type: ignore[arg-type]
        assert kwargs["obj_ids"] == 1 and kwargs["input_labels"] == [[[1] * 8]]
        return add(**kwargs)

    processor.add_inputs_to_inference_session = record  # type: ignore[attr-defined]
    try:
        first = M.sam2_masks(model, processor, frames, metas)
    finally:
        del processor.add_inputs_to_inference_session  # type: ignore[attr-defined]
    second = M.sam2_masks(model, processor, frames, metas)
    assert len(first) == 6
    for a, b in zip(first, second):
        assert a.shape == (48, 64) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
        np.testing.assert_array_equal(a, b)
    prompts = M.sam2_prompts(metas)
    assert [(k, p) for _, k, p in calls] == [(k, [[p]]) for k, p in prompts]
    session = calls[0][0]
    for k, points in prompts:  # the points the model sees: scaled to its 64 x 64 input
        stored = session.point_inputs_per_obj[0][k]["point_coords"].numpy()  # type: ignore[attr-defined]
        want = np.array(points, np.float32) * np.array([64 / 64, 64 / 48], np.float32)
        np.testing.assert_allclose(stored[0, 0], want, rtol=1e-6)


def test_sam2_masks_one_session_per_chunk(sam2: tuple[object, object], monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor = sam2
    frames, metas = video(6)
    sessions: list[int] = []
    init = processor.init_video_session  # type: ignore[attr-defined]

    def record(**kwargs: object) -> object:
        sessions.append(len(kwargs["video"]))  # type: ignore[arg-type]
        return init(**kwargs)

    monkeypatch.setattr(processor, "init_video_session", record)
    got = M.sam2_masks(model, processor, frames, metas, chunk_size=4)
    assert sessions == [4, 2] and len(got) == 6
    assert all(m.shape == (48, 64) and m.dtype == np.uint8 for m in got)


def test_torch_processor_normalisation() -> None:
    proc = M.TorchSam2VideoProcessor(64, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 1 / 255)
    frame = np.full((64, 64, 3), 128, np.uint8)
    session = proc.init_video_session(video=[frame])
    pixels = session.processed_frames[0].numpy()
    for c, (mean, std) in enumerate([(0.485, 0.229), (0.456, 0.224), (0.406, 0.225)]):
        np.testing.assert_allclose(pixels[c], (128 - mean * 255) / (std * 255), rtol=1e-6)


def test_load_sam2_rejects_other_folders(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such folder"):
        M.load_sam2(tmp_path / "absent", "cpu")
    with pytest.raises(CheckpointError, match="config.json"):
        M.load_sam2(tmp_path, "cpu")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "sam2"}))
    with pytest.raises(CheckpointError, match="'sam2'.*sam2_video") as error:
        M.load_sam2(tmp_path, "cpu")
    assert str(tmp_path) in str(error.value)
