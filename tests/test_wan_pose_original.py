"""`zoo pose` for wan-animate-pose pinned to the unmodified original.

Wan2.2's ``wan/modules/animate/preprocess`` (Wan-Video/Wan2.2 @ 42bf4cf) was run, unchanged, in a
scratch environment outside the repository (numpy 1.26 as Wan pins, decord 0.6.0, moviepy 1.0.3,
OpenCV 4.11, ONNX Runtime 1.32 CPU) on exactly the inputs below: `zoo random`'s stand-in graphs at
seed 0, a 120x160 reference and an 8-frame 128x96 FFV1 video at 24 fps, both drawn by
:func:`figure_frames` (a lossless codec: decord and OpenCV decode the same pixels). Every frame list
the original handed to its video writer was saved losslessly; the digests below are of those frames
(RGB bytes, in order). SAM2 was replaced there by a stand-in that receives the original's own
prompts (key frames, 8 body points) and answers with the bright pixels inside the box of the latest
key frame's points widened by 20 px; the same stand-in, answering through transformers' SAM2 video
API, runs here, so replace mode checks the zoo's prompting as well as everything after it. No code
of the original is in this repository: only these digests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from conftest import zoo

from zoo.families.wan_animate_pose import step as step_module
from zoo.families.wan_animate_pose.samples import figure_frames

FAMILY = "wan-animate-pose"

# (frames, sha256 of their RGB bytes, first 32 hex digits) of what the original handed its writer
ORIGINAL = {
    "animate": {
        "src_pose": (10, "ba3a1ff0c9b5f3e2491127859562eb8f"),
        "src_face": (10, "edf72e23680d44450aa688e28094f95e"),
    },
    "retarget": {
        "src_pose": (10, "7509eb8e73e1b6a728b50d1882f2fdf0"),
        "src_face": (10, "edf72e23680d44450aa688e28094f95e"),
    },
    "replace": {  # --replace_flag --resolution_area 256 192
        "src_pose": (10, "568fbd274c8fa75004e497269bedf8ae"),
        "src_face": (10, "230e4dc3171cd4e4b80b526212d828bc"),
        "src_bg": (10, "ae2460f5af5a0ab6667b6780992ee7dd"),
        "src_mask": (10, "71f1939e022ac392f068a170deb183d3"),
        "raw_mask": (10, "c6a14c9caebc06ddae33220908148ada"),  # the SAM2 stand-in's masks, before dilation
    },
}


def digest(frames: list[np.ndarray]) -> tuple[int, str]:
    h = hashlib.sha256()
    for f in frames:
        h.update(np.ascontiguousarray(f).tobytes())
    return len(frames), h.hexdigest()[:32]


def folder_digest(folder: Path) -> tuple[int, str]:
    return digest([cv2.imread(str(p), cv2.IMREAD_COLOR)[..., ::-1] for p in sorted(folder.iterdir())])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan-original")
    cv2.imwrite(str(root / "ref.png"), figure_frames(1, 160, 120, seed=1)[0][..., ::-1])
    writer = cv2.VideoWriter(str(root / "drive.avi"), cv2.VideoWriter_fourcc(*"FFV1"), 24, (128, 96))
    for f in figure_frames(8, 96, 128, seed=0):
        writer.write(np.ascontiguousarray(f[..., ::-1]))
    writer.release()
    return root / "ref.png", root / "drive.avi"


@pytest.mark.parametrize("case", ["animate", "retarget"])
def test_animate_frames_are_the_originals(tiny_export, inputs, tmp_path, case):
    image, video = inputs
    extra = ["--retarget"] if case == "retarget" else []
    result = zoo("pose", tiny_export(FAMILY), "--image", image, "--video", video, "--out", tmp_path / "c", *extra)
    assert result.exit_code == 0, result.output
    for stream, want in ORIGINAL[case].items():
        assert folder_digest(tmp_path / "c" / stream) == want, stream


# -- the SAM2 stand-in, answering through transformers' Sam2VideoModel / Sam2VideoProcessor calls --

EXPAND, BRIGHT_SUM = 20, 450


class StandInSession:
    def __init__(self, frames):
        self.frames, self.points = [np.asarray(f) for f in frames], {}

    def mask(self, t: int) -> np.ndarray:
        frame = self.frames[t]
        h, w = frame.shape[:2]
        out = np.zeros((h, w), np.uint8)
        keys = [k for k in self.points if k <= t]
        if not keys:
            return out
        pts = self.points[max(keys)]
        x0, x1 = max(int(pts[:, 0].min()) - EXPAND, 0), min(int(pts[:, 0].max()) + EXPAND, w - 1)
        y0, y1 = max(int(pts[:, 1].min()) - EXPAND, 0), min(int(pts[:, 1].max()) + EXPAND, h - 1)
        if x1 >= x0 and y1 >= y0:
            brightness = frame[y0 : y1 + 1, x0 : x1 + 1].astype(np.int32).sum(axis=2)
            out[y0 : y1 + 1, x0 : x1 + 1] = brightness > BRIGHT_SUM
        return out


class StandInProcessor:
    def init_video_session(self, video, inference_device, dtype):
        return StandInSession(video)

    def add_inputs_to_inference_session(self, inference_session, frame_idx, obj_ids, input_points, input_labels):
        assert obj_ids == 1 and input_labels == [[[1] * 8]]
        inference_session.points[frame_idx] = np.asarray(input_points[0][0], dtype=np.int64)

    def post_process_masks(self, masks, original_sizes, binarize):
        return [(masks[0] > 0).to(torch.uint8)]


class StandInModel:
    dtype = torch.float32
    raw: list[np.ndarray] = []

    def parameters(self):
        yield torch.zeros(1)

    def __call__(self, inference_session, frame_idx):
        return None

    def propagate_in_video_iterator(self, session):
        for t in range(min(session.points), len(session.frames)):
            mask = session.mask(t)
            StandInModel.raw.append(mask)
            logits = torch.from_numpy(np.where(mask > 0, 1.0, -1.0).astype(np.float32))[None, None]
            yield SimpleNamespace(frame_idx=t, pred_masks=logits)


def test_replace_frames_and_sam2_prompts_are_the_originals(tiny_export, inputs, tmp_path, monkeypatch):
    import runtimes.sampler

    StandInModel.raw = []
    monkeypatch.setattr(runtimes.sampler, "host_loaders", lambda manifest, device: {"sam2": StandInModel})
    monkeypatch.setattr(step_module, "processor_for", lambda model: StandInProcessor())
    image, video = inputs
    out = tmp_path / "c"
    result = zoo(
        "pose", tiny_export(FAMILY), "--image", image, "--video", video, "--out", out, "--mode", "replace",
        "--resolution-area", "256", "192",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (
        digest([np.repeat(m[..., None] * 255, 3, axis=2) for m in StandInModel.raw]) == ORIGINAL["replace"]["raw_mask"]
    )
    for stream, want in ORIGINAL["replace"].items():
        if stream != "raw_mask":
            assert folder_digest(out / stream) == want, stream
