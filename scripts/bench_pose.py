"""Frames per second of `zoo pose` (unianimate-pose) on this CPU with stand-ins of the real models' size,
against the original's way (plain onnxruntime sessions, frame by frame), and where the time goes.

The stand-ins are random-weight torch modules of the real architectures, exported with torch.onnx with
the real graphs' IO (POSE.md 1.1 / 2.1):

* detector: YOLOX-L (CSPDarknet-L backbone, PAFPN, decoupled head; depth 1.0, width 1.0), ``images``
  float32 [1,3,640,640] -> ``output`` float32 [1,8400,85] (raw box regression, sigmoid objectness and
  class probabilities, as the real export). So that the pipeline sees people where the video has
  bright shapes (random weights see none), objectness gets a term from each anchor cell's mean
  brightness and the box/class outputs a fixed bias (a handful of elementwise ops: no FLOPs to speak of).
* pose model: RTMPose-L (CSPNeXt-L backbone, RTMCC head: 7x7 conv, ScaleNorm+Linear, a GAU block, SimCC
  linears), ``input`` float32 [B,3,384,288] -> ``simcc_x`` [B,133,576], ``simcc_y`` [B,133,768]; the
  SimCC linears are scaled so most keypoints come out visible (scores > 0.3), as on a real person.

BatchNorm statistics are set by one training-mode pass, so activations keep a realistic scale
(no denormals, no overflow). Then it writes a driving video with moving bright shapes and a reference
image, exports the stand-ins with `zoo export unianimate-pose --detector --pose-model`, and measures

(a) `zoo pose EXPORT --image REF --video VIDEO --out OUT --backend onnxruntime` end to end, a child process;
(b) the original's way: onnxruntime.InferenceSession (CPUExecutionProvider) per model, every frame through
    the pure functions of zoo.families.unianimate_pose (pose_of_image's body, stage by stage, so that
    (c) comes from the same pass; the first frames are checked against pose_of_image itself), the
    alignment and drawing as zoo pose does them;
(c) per-frame milliseconds per stage of (b);

and checks that (a) and (b) wrote identical JPEG bytes (a mismatch exits 1).

    python scripts/bench_pose.py --work /tmp/bench-pose [--frames 150] [--size 720x1280] [--threads T]
    python scripts/bench_pose.py --work /tmp/bp --quick      # 8 frames at 240x320: a smoke test

--threads sets (b)'s intra-op threads; `zoo pose` (a) always runs with onnxruntime's defaults.
(a) and (b) run one after the other, so on a shared machine the load drifts between them: the load
average is printed after each, and --b-first swaps the order; compare runs in both orders.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo.families.unianimate_pose import dwpose  # noqa: E402
from zoo.families.unianimate_pose.align import align_poses  # noqa: E402
from zoo.families.unianimate_pose.draw import draw_pose, write_jpeg  # noqa: E402
from zoo.families.unianimate_pose.step import REFERENCE_POSE_FILE, frame_name  # noqa: E402

OPSET = 17
# published sizes: YOLOX README (params, "FLOPs" = 2 x MACs), mmpose RTMPose model zoo ("FLOPs" = MACs)
REAL = {
    "detector": {"name": "YOLOX-L 640", "params": 54.2e6, "macs": 155.6e9 / 2},
    "pose_model": {"name": "RTMPose-L 384x288 (DWPose-L)", "params": 28.11e6, "macs": 10.07e9},
}
DETECTOR_FILE = "yolox_l_standin.onnx"
POSE_FILE = "rtmpose_l_standin.onnx"
STAGES = (
    ("decode", "video decode (cv2.VideoCapture.read)"),
    ("det_pre", "detector preprocessing (letterbox)"),
    ("det_run", "detector run (onnxruntime)"),
    ("det_post", "detector decode + NMS"),
    ("pose_pre", "pose crop + normalise"),
    ("pose_run", "pose model run (onnxruntime)"),
    ("simcc", "SimCC decode, to image, OpenPose order, dict"),
    ("align", "alignment (align_poses, per frame)"),
    ("draw", "drawing (draw_pose)"),
    ("jpeg", "JPEG write (cv2.imwrite)"),
)


# --------------------------------------------------------------------------------------
# YOLOX-L (YOLOX's yolo_pafpn.py / darknet.py / yolo_head.py, depth 1.0 width 1.0)
# --------------------------------------------------------------------------------------


class BaseConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, s: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, k, s, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.SiLU()
        )


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1, self.conv2, self.add = BaseConv(c, c, 1), BaseConv(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return x + y if self.add else y


class CSPLayer(nn.Module):
    def __init__(self, cin: int, cout: int, n: int, shortcut: bool = True) -> None:
        super().__init__()
        h = cout // 2
        self.conv1, self.conv2, self.conv3 = BaseConv(cin, h, 1), BaseConv(cin, h, 1), BaseConv(2 * h, cout, 1)
        self.m = nn.Sequential(*(Bottleneck(h, shortcut) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat((self.m(self.conv1(x)), self.conv2(x)), 1))


class SPPBottleneck(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        h = cin // 2
        self.conv1, self.conv2 = BaseConv(cin, h, 1), BaseConv(4 * h, cout, 1)
        self.pools = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in (5, 9, 13))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x, *(p(x) for p in self.pools)], 1))


class YoloxL(nn.Module):
    """images [1,3,640,640] (BGR 0..255) -> output [1,8400,85]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = BaseConv(12, 64, 3)  # Focus: space-to-depth, then this conv
        self.dark2 = nn.Sequential(BaseConv(64, 128, 3, 2), CSPLayer(128, 128, 3))
        self.dark3 = nn.Sequential(BaseConv(128, 256, 3, 2), CSPLayer(256, 256, 9))
        self.dark4 = nn.Sequential(BaseConv(256, 512, 3, 2), CSPLayer(512, 512, 9))
        self.dark5 = nn.Sequential(BaseConv(512, 1024, 3, 2), SPPBottleneck(1024, 1024), CSPLayer(1024, 1024, 3, False))
        self.lateral_conv0 = BaseConv(1024, 512, 1)
        self.C3_p4 = CSPLayer(1024, 512, 3, False)
        self.reduce_conv1 = BaseConv(512, 256, 1)
        self.C3_p3 = CSPLayer(512, 256, 3, False)
        self.bu_conv2 = BaseConv(256, 256, 3, 2)
        self.C3_n3 = CSPLayer(512, 512, 3, False)
        self.bu_conv1 = BaseConv(512, 512, 3, 2)
        self.C3_n4 = CSPLayer(1024, 1024, 3, False)
        self.heads = nn.ModuleList()
        for c in (256, 512, 1024):
            head = nn.Module()
            head.stem = BaseConv(c, 256, 1)
            head.cls_convs = nn.Sequential(BaseConv(256, 256, 3), BaseConv(256, 256, 3))
            head.reg_convs = nn.Sequential(BaseConv(256, 256, 3), BaseConv(256, 256, 3))
            head.cls_pred, head.reg_pred, head.obj_pred = (
                nn.Conv2d(256, 80, 1),
                nn.Conv2d(256, 4, 1),
                nn.Conv2d(256, 1, 1),
            )
            self.heads.append(head)
        # stand-in biases (see the module docstring): box centre mid-cell, 6 cells wide, class 0 likely
        self.register_buffer("reg_bias", torch.tensor([0.5, 0.5, math.log(6.0), math.log(6.0)]).view(1, 4, 1, 1))
        cls_bias = torch.full((1, 80, 1, 1), -4.0)
        cls_bias[0, 0] = 4.0
        self.register_buffer("cls_bias", cls_bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.cat(
            (images[..., ::2, ::2], images[..., 1::2, ::2], images[..., ::2, 1::2], images[..., 1::2, 1::2]), 1
        )
        x = self.dark2(self.stem(x))
        x2 = self.dark3(x)
        x1 = self.dark4(x2)
        x0 = self.dark5(x1)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat((F.interpolate(fpn_out0, scale_factor=2.0, mode="nearest"), x1), 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat((F.interpolate(fpn_out1, scale_factor=2.0, mode="nearest"), x2), 1))
        pan_out1 = self.C3_n3(torch.cat((self.bu_conv2(pan_out2), fpn_out1), 1))
        pan_out0 = self.C3_n4(torch.cat((self.bu_conv1(pan_out1), fpn_out0), 1))
        gray = images.mean(1, keepdim=True) / 255.0
        outs = []
        for head, feat, stride in zip(self.heads, (pan_out2, pan_out1, pan_out0), (8, 16, 32)):
            feat = head.stem(feat)
            cls_feat, reg_feat = head.cls_convs(feat), head.reg_convs(feat)
            bright = F.avg_pool2d(gray, stride, stride)
            reg = 0.1 * head.reg_pred(reg_feat) + self.reg_bias
            obj = torch.sigmoid(0.1 * head.obj_pred(reg_feat) + 20.0 * (bright - 0.7))
            cls = torch.sigmoid(0.1 * head.cls_pred(cls_feat) + self.cls_bias)
            outs.append(torch.cat((reg, obj, cls), 1).flatten(2))
        return torch.cat(outs, 2).permute(0, 2, 1)


# --------------------------------------------------------------------------------------
# RTMPose-L (mmdet CSPNeXt P5 deepen 1.0 widen 1.0, out stage 4; mmpose RTMCCHead), 384x288, 133 points
# --------------------------------------------------------------------------------------


class ChannelAttention(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * F.hardsigmoid(self.fc(F.adaptive_avg_pool2d(x, 1)))


class CSPNeXtBlock(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.conv1 = BaseConv(c, c, 3)
        self.dw, self.pw, self.add = BaseConv(c, c, 5, groups=c), BaseConv(c, c, 1), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw(self.dw(self.conv1(x)))
        return x + y if self.add else y


class CSPNeXtLayer(nn.Module):
    def __init__(self, c: int, n: int, shortcut: bool) -> None:
        super().__init__()
        h = c // 2
        self.main, self.short, self.final = BaseConv(c, h, 1), BaseConv(c, h, 1), BaseConv(2 * h, c, 1)
        self.blocks = nn.Sequential(*(CSPNeXtBlock(h, shortcut) for _ in range(n)))
        self.attention = ChannelAttention(2 * h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final(self.attention(torch.cat((self.blocks(self.main(x)), self.short(x)), 1)))


class ScaleNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale, self.g = dim**-0.5, nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale).clamp(min=1e-5) * self.g


class RTMCCBlock(nn.Module):
    def __init__(self, dim: int = 256, e: int = 512, s: int = 128) -> None:
        super().__init__()
        self.e, self.s = e, s
        self.ln, self.uv, self.o = ScaleNorm(dim), nn.Linear(dim, 2 * e + s, bias=False), nn.Linear(e, dim, bias=False)
        self.gamma, self.beta = nn.Parameter(torch.rand(2, s)), nn.Parameter(torch.rand(2, s))
        self.res_scale = nn.Parameter(torch.ones(dim))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        u, v, base = torch.split(F.silu(self.uv(self.ln(inputs))), [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma + self.beta
        q, k = base[:, :, 0], base[:, :, 1]
        kernel = torch.square(F.relu(torch.bmm(q, k.permute(0, 2, 1)) / math.sqrt(self.s)))
        return inputs * self.res_scale + self.o(u * torch.bmm(kernel, v))


class RTMPoseL(nn.Module):
    """input [B,3,384,288] -> simcc_x [B,133,576], simcc_y [B,133,768]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(BaseConv(3, 32, 3, 2), BaseConv(32, 32, 3), BaseConv(32, 64, 3))
        self.stages = nn.Sequential(
            BaseConv(64, 128, 3, 2),
            CSPNeXtLayer(128, 3, True),
            BaseConv(128, 256, 3, 2),
            CSPNeXtLayer(256, 6, True),
            BaseConv(256, 512, 3, 2),
            CSPNeXtLayer(512, 6, True),
            BaseConv(512, 1024, 3, 2),
            SPPBottleneck(1024, 1024),
            CSPNeXtLayer(1024, 3, False),
        )
        self.final_layer = nn.Conv2d(1024, 133, 7, 1, 3)
        self.mlp = nn.Sequential(ScaleNorm(12 * 9), nn.Linear(12 * 9, 256, bias=False))
        self.gau = RTMCCBlock()
        self.cls_x, self.cls_y = nn.Linear(256, 576, bias=False), nn.Linear(256, 768, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.gau(self.mlp(self.final_layer(self.stages(self.stem(x))).flatten(2)))
        return self.cls_x(feats), self.cls_y(feats)


# --------------------------------------------------------------------------------------
# Build: BN statistics, counts, export
# --------------------------------------------------------------------------------------


def count(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """Parameters and multiply-accumulates of one forward (conv, linear and the GAU's two bmm)."""
    macs = [0]

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            macs[0] += out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            macs[0] += out.numel() * m.in_features
        elif isinstance(m, RTMCCBlock):
            b, t, _ = inp[0].shape
            macs[0] += b * t * t * (m.s + m.e)

    handles = [
        m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear | RTMCCBlock)
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sum(p.numel() for p in model.parameters()), macs[0]


def calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics from one training-mode pass (cumulative average), then eval."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()


def blob_batch(n: int, h: int, w: int, gen: torch.Generator) -> torch.Tensor:
    """BGR 0..255 images: dark, with a bright rectangle each."""
    x = torch.full((n, 3, h, w), 20.0)
    for i in range(n):
        y0, x0 = int(torch.randint(0, h // 2, (1,), generator=gen)), int(torch.randint(0, w // 2, (1,), generator=gen))
        x[i, :, y0 : y0 + h // 3, x0 : x0 + w // 4] = 250.0
    return x


def export(model: nn.Module, x: torch.Tensor, path: Path, inputs: list[str], outputs: list[str], dynamic: bool) -> None:
    axes = {n: {0: "batch"} for n in inputs + outputs} if dynamic else None
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model, (x,), str(tmp), input_names=inputs, output_names=outputs, opset_version=OPSET,
        dynamic_axes=axes, dynamo=False,
    )  # fmt: skip
    tmp.replace(path)


def build(work: Path) -> dict[str, Any]:
    """The two stand-ins under ``work/models`` (cached with their counts in ``counts.json``)."""
    models = work / "models"
    info_path = models / "counts.json"
    if info_path.is_file() and (models / DETECTOR_FILE).is_file() and (models / POSE_FILE).is_file():
        info = json.loads(info_path.read_text())
        info["cached"] = True
        return info
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    info: dict[str, Any] = {"cached": False}
    t0 = time.perf_counter()
    det = YoloxL()
    det_x = blob_batch(1, 640, 640, gen)
    calibrate(det, blob_batch(2, 640, 640, gen))
    params, macs = count(det, det_x)
    export(det, det_x, models / DETECTOR_FILE, ["images"], ["output"], dynamic=False)
    info["detector"] = {"params": params, "macs": macs, "build_s": time.perf_counter() - t0}
    t0 = time.perf_counter()
    pose = RTMPoseL()
    mean = torch.tensor(dwpose.POSE_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(dwpose.POSE_STD, dtype=torch.float32).view(1, 3, 1, 1)
    crops = (blob_batch(4, 384, 288, gen) - mean) / std
    calibrate(pose, crops)
    with torch.no_grad():  # SimCC maxima around 0.6 (3 sigma of 576 bins): most points visible
        sx, sy = pose(crops)
        k = 0.2 / float(torch.cat((sx.flatten(), sy.flatten())).std())
        pose.cls_x.weight *= k
        pose.cls_y.weight *= k
    params, macs = count(pose, crops[:1])
    export(pose, crops[:1], models / POSE_FILE, ["input"], ["simcc_x", "simcc_y"], dynamic=True)
    info["pose_model"] = {"params": params, "macs": macs, "build_s": time.perf_counter() - t0}
    info_path.write_text(json.dumps(info, indent=1))
    return info


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


def write_inputs(work: Path, frames: int, h: int, w: int) -> tuple[Path, Path]:
    """A driving video (mp4v) of a moving bright figure and a ball, and a reference image."""
    video, ref = work / f"drive_{frames}_{h}x{w}.mp4", work / "ref.png"
    if not video.is_file():
        tmp = video.with_suffix(".tmp.mp4")
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
        if not writer.isOpened():
            sys.exit("error: cv2.VideoWriter cannot write mp4v here")
        for i in range(frames):
            f = np.full((h, w, 3), 20, np.uint8)
            t = i / max(frames - 1, 1)
            cx, cy = int(w * (0.3 + 0.4 * t)), int(h * (0.5 + 0.05 * math.sin(6 * t)))
            bw, bh = w // 10, int(h * 0.55)
            cv2.rectangle(f, (cx - bw // 2, cy - bh // 2), (cx + bw // 2, cy + bh // 2), (245, 245, 245), -1)
            cv2.circle(f, (cx, cy - bh // 2 - h // 16), h // 16, (250, 250, 250), -1)
            arm = int(bw * (1.0 + 0.5 * math.sin(8 * t)))
            cv2.line(f, (cx, cy - bh // 3), (cx + arm, cy), (240, 240, 240), max(h // 60, 2))
            cv2.circle(f, (int(w * (0.9 - 0.8 * t)), int(h * 0.15)), h // 20, (60, 200, 250), -1)
            writer.write(f)
        writer.release()
        tmp.replace(video)
    if not ref.is_file():
        f = np.full((768, 512, 3), 12, np.uint8)
        cv2.rectangle(f, (206, 200), (306, 700), (250, 250, 250), -1)
        cv2.circle(f, (256, 150), 50, (250, 250, 250), -1)
        cv2.imwrite(str(ref), f)
    return video, ref


# --------------------------------------------------------------------------------------
# (b) and (c): the original's way, stage by stage
# --------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.total: dict[str, float] = {k: 0.0 for k, _ in STAGES}

    def run(self, stage: str, fn: Callable[..., Any], *args: Any) -> Any:
        t = time.perf_counter()
        out = fn(*args)
        self.total[stage] += time.perf_counter() - t
        return out


def staged_pose_of_image(
    image: np.ndarray, detect: Callable, estimate: Callable, input_hw: tuple[int, int], clock: Clock
) -> dwpose.PoseResult:
    """dwpose.pose_of_image's body, each pure function timed as a stage."""
    h, w = image.shape[:2]
    x, r = clock.run("det_pre", dwpose.letterbox, image)
    out = clock.run("det_run", detect, x)
    boxes = clock.run("det_post", dwpose.decode_detections, np.asarray(out, dtype=np.float32), r)
    box = boxes[0] if len(boxes) else np.array([0.0, 0.0, float(w), float(h)])

    def prepare() -> tuple[Any, Any, np.ndarray]:
        c, s = dwpose.box_center_scale(box, input_hw)
        return c, s, dwpose.crop_person(image, c, s, input_hw)[None]

    c, s, crop = clock.run("pose_pre", prepare)
    simcc_x, simcc_y = clock.run("pose_run", dwpose._run_pose, estimate, crop, input_hw)

    def decode() -> dwpose.PoseResult:
        locs, scores = dwpose.decode_simcc(simcc_x, simcc_y)
        keypoints = np.stack([dwpose.to_image(locs[0], c, s, input_hw)])
        op_k, op_s = dwpose.openpose_order(keypoints, scores)
        return dwpose.PoseResult(boxes, box, keypoints[0], scores[0], dwpose.pose_dict(op_k, op_s, (h, w)))

    return clock.run("simcc", decode)


def same_result(a: dwpose.PoseResult, b: dwpose.PoseResult) -> bool:
    return all(
        np.array_equal(x, y, equal_nan=True)
        for x, y in (
            (a.boxes, b.boxes),
            (a.box, b.box),
            (a.keypoints, b.keypoints),
            (a.scores, b.scores),
            (a.pose.candidate, b.pose.candidate),
            (a.pose.subset, b.pose.subset),
            (a.pose.hands, b.pose.hands),
            (a.pose.faces, b.pose.faces),
        )
    )


def original_way(models: Path, ref: Path, video: Path, out: Path, threads: int | None, checked: int) -> dict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    t_start = time.perf_counter()
    det = ort.InferenceSession(str(models / DETECTOR_FILE), opts, providers=providers)
    pose = ort.InferenceSession(str(models / POSE_FILE), opts, providers=providers)
    load_s = time.perf_counter() - t_start
    shape = pose.get_inputs()[0].shape
    input_hw = (int(shape[2]), int(shape[3]))

    def detect(x: np.ndarray) -> np.ndarray:
        return det.run(None, {"images": x})[0]

    def estimate(x: np.ndarray) -> list[np.ndarray]:
        return pose.run(None, {"input": x})

    clock = Clock()
    reference = staged_pose_of_image(cv2.imread(str(ref)), detect, estimate, input_hw, Clock())
    results = []
    t0 = time.perf_counter()
    cap = cv2.VideoCapture(str(video))
    mismatches, check_s = 0, 0.0
    while True:
        ok, frame = clock.run("decode", cap.read)
        if not ok:
            break
        result = staged_pose_of_image(frame, detect, estimate, input_hw, clock)
        if len(results) < checked:  # outside the timing: the pure function itself on the same frame
            tc = time.perf_counter()
            mismatches += not same_result(result, dwpose.pose_of_image(frame, detect, estimate, input_hw=input_hw))
            check_s += time.perf_counter() - tc
        results.append(result)
    cap.release()
    t_frames = time.perf_counter() - t0
    aligned, _ = clock.run("align", align_poses, reference.pose, [r.pose for r in results])
    out.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(aligned):
        canvas = clock.run("draw", draw_pose, p)
        clock.run("jpeg", write_jpeg, out / frame_name(i), canvas)
    write_jpeg(out / REFERENCE_POSE_FILE, draw_pose(reference.pose))
    total = time.perf_counter() - t_start - check_s
    finite_ms = finite_check_cost(det, pose, reference_image := cv2.imread(str(ref)), input_hw)
    del reference_image
    n = len(results)
    per = {k: v / max(n, 1) for k, v in clock.total.items()}
    loop = t_frames - check_s
    return {
        "frames": n,
        "session_load_s": load_s,
        "total_s": total,
        "frame_loop_s": loop,
        "stage_ms": {k: 1000 * v for k, v in per.items()},
        "stage_sum_s": sum(clock.total.values()),
        "checked": min(checked, n),
        "mismatches": mismatches,
        "people": sum(1 for r in results if len(r.boxes)),
        "intra_op_threads": threads or "ORT default",
        "finite_check_ms": finite_ms,
    }


def finite_check_cost(det: Any, pose: Any, image: np.ndarray, input_hw: tuple[int, int], reps: int = 5) -> dict:
    """What zoo pose's runner adds per model call that (b) does not do: the NaN/Inf check of the
    feeds and outputs (runtimes.feeds.first_nonfinite on torch tensors), timed right after the
    session run as the runner does it (ORT's threads may still be spinning then), in ms per call."""
    from runtimes.feeds import first_nonfinite

    x, _ = dwpose.letterbox(image)
    box = np.array([0.0, 0.0, float(image.shape[1]), float(image.shape[0])])
    c, s = dwpose.box_center_scale(box, input_hw)
    crop = dwpose.crop_person(image, c, s, input_hw)[None]
    cost = {}
    for name, sess, feed in (("detector", det, "images"), ("pose_model", pose, "input")):
        arr = x if name == "detector" else crop
        spent, idle = 0.0, 0.0
        for _ in range(reps):
            outs = sess.run(None, {feed: arr})
            t = time.perf_counter()
            tensors = {
                ("in", feed): torch.from_numpy(arr),
                **{("out", i): torch.from_numpy(o) for i, o in enumerate(outs)},
            }
            assert first_nonfinite(tensors) is None
            spent += time.perf_counter() - t
            time.sleep(0.2)  # ORT's threads stop spinning
            t = time.perf_counter()
            assert first_nonfinite(tensors) is None
            idle += time.perf_counter() - t
        cost[name], cost[name + "_idle"] = 1000 * spent / reps, 1000 * idle / reps
    return cost


def write_one_frame(video: Path, dest: Path) -> Path:
    """The driving video's first frame as a 1-frame video (zoo pose's fixed cost)."""
    if not dest.is_file():
        cap = cv2.VideoCapture(str(video))
        ok, frame = cap.read()
        cap.release()
        writer = cv2.VideoWriter(str(dest), cv2.VideoWriter_fourcc(*"mp4v"), 25, (frame.shape[1], frame.shape[0]))
        writer.write(frame)
        writer.release()
    return dest


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def compare(a: Path, b: Path) -> tuple[bool, str]:
    na, nb = sorted(p.name for p in a.iterdir()), sorted(p.name for p in b.iterdir())
    if na != nb:
        return False, f"different files: {len(na)} vs {len(nb)}"
    diff = [n for n in na if (a / n).read_bytes() != (b / n).read_bytes()]
    return not diff, f"{len(na) - len(diff)}/{len(na)} JPEGs byte-identical" + (
        f" (differ: {diff[:5]})" if diff else ""
    )


def run(cmd: list[str], what: str) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    s = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"error: {what} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the stand-ins (cached), video, exports")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", default="720x1280", help="HxW of the driving video")
    ap.add_argument("--threads", type=int, default=None, help="(b)'s onnxruntime intra-op threads (default: ORT's)")
    ap.add_argument("--quick", action="store_true", help="8 frames at 240x320: a smoke test")
    ap.add_argument("--b-first", action="store_true", help="measure (b) before (a) (the load drifts)")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.quick:
        args.frames, args.size = 8, "240x320"
    h, w = (int(v) for v in args.size.lower().split("x"))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    zoo = str(Path(sys.executable).parent / "zoo")
    report: dict[str, Any] = {
        "load_start": os.getloadavg(),
        "cpus": os.cpu_count(),
        "frames": args.frames,
        "size": [h, w],
    }
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in report['load_start'])} ({os.cpu_count()} CPUs)")

    t = time.perf_counter()
    info = build(work)
    print(
        f"stand-ins {'cached' if info['cached'] else 'built'} in {time.perf_counter() - t:.1f} s under {work / 'models'}"
    )
    for key in ("detector", "pose_model"):
        mine, real = info[key], REAL[key]
        print(
            f"  {key:10s} params {mine['params'] / 1e6:6.2f} M (real {real['name']}: {real['params'] / 1e6:.2f} M, "
            f"{100 * (mine['params'] / real['params'] - 1):+.0f}%)  MACs {mine['macs'] / 1e9:6.2f} G = "
            f"{2 * mine['macs'] / 1e9:.1f} GFLOPs (real {real['macs'] / 1e9:.2f} G, {100 * (mine['macs'] / real['macs'] - 1):+.0f}%)"
        )
    report["models"] = {k: info[k] for k in ("detector", "pose_model")}

    video, ref = write_inputs(work, args.frames, h, w)
    export_dir = work / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    models = work / "models"
    s = run(
        [zoo, "export", "unianimate-pose", "--detector", str(models / DETECTOR_FILE), "--pose-model",
         str(models / POSE_FILE), "--out", str(export_dir)],
        "zoo export",
    )  # fmt: skip
    manifest = json.loads((export_dir / "manifest.json").read_text())
    batch = manifest["components"]["pose_model"].get("dims", {}).get("batch")
    print(f"zoo export: {s:.1f} s -> {export_dir} (pose_model batch dims: {json.dumps(batch)})")

    out_a, out_b = work / "out_zoo", work / "out_original"
    shutil.rmtree(out_b, ignore_errors=True)

    def measure_a() -> None:
        one = write_one_frame(video, work / f"one_{h}x{w}.mp4")
        s_one = run([zoo, "pose", str(export_dir), "--image", str(ref), "--video", str(one), "--out", str(work / "out_one"), "--backend", "onnxruntime"], "zoo pose (1 frame)")  # fmt: skip
        s_a = run([zoo, "pose", str(export_dir), "--image", str(ref), "--video", str(video), "--out", str(out_a), "--backend", "onnxruntime"], "zoo pose")  # fmt: skip
        marginal = (args.frames - 1) / (s_a - s_one) if s_a > s_one else float("nan")
        report["zoo_pose"] = {
            "wall_s": s_a,
            "fps": args.frames / s_a,
            "one_frame_wall_s": s_one,
            "marginal_fps": marginal,
        }
        print(
            f"(a) zoo pose --backend onnxruntime: {s_a:.1f} s wall for {args.frames} frames + the reference = "
            f"{args.frames / s_a:.2f} frames/s; on a 1-frame video {s_one:.1f} s (start-up, sessions, reference, "
            f"1 frame), so {marginal:.2f} frames/s per extra frame"
        )
        print(f"    load average after (a): {loadavg()}")

    def measure_b() -> dict:
        b = original_way(models, ref, video, out_b, args.threads, checked=3)
        report["original"] = b
        print(
            f"(b) plain onnxruntime sessions ({b['intra_op_threads']} intra-op threads): {b['total_s']:.1f} s "
            f"(sessions {b['session_load_s']:.1f} s) = {b['frames'] / b['total_s']:.2f} frames/s; "
            f"frames with a person: {b['people']}/{b['frames']}; first {b['checked']} frames equal "
            f"pose_of_image's results: {'yes' if not b['mismatches'] else 'NO'}"
        )
        print(f"    load average after (b): {loadavg()}")
        return b

    if args.b_first:
        b = measure_b()
        measure_a()
    else:
        measure_a()
        b = measure_b()
    print(
        f"(c) where (b)'s time goes, ms per frame ({b['frames']} frames; pose_of_image run again on the first {b['checked']}, not counted):"
    )
    stage_ms = b["stage_ms"]
    total_ms = sum(stage_ms.values())
    for k, name in STAGES:
        print(f"    {name:46s} {stage_ms[k]:9.2f} ms  {100 * stage_ms[k] / total_ms:5.1f}%")
    print(f"    {'sum':46s} {total_ms:9.2f} ms  = {1000 / total_ms:.2f} frames/s")

    fc = b["finite_check_ms"]
    print(
        f"zoo pose's runner's NaN/Inf check of feeds and outputs (not in (b)), right after a run: "
        f"detector {fc['detector']:.1f} ms, pose model {fc['pose_model']:.1f} ms per call "
        f"(0.2 s later, ORT's threads idle: {fc['detector_idle']:.1f} ms, {fc['pose_model_idle']:.1f} ms)"
    )
    same, detail = compare(out_a, out_b)
    report["identical"], report["identical_detail"] = same, detail
    print(f"identical JPEG bytes (a) vs (b): {'yes' if same else 'NO'}: {detail}")
    report["load_end"] = os.getloadavg()
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in report['load_end'])}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if not same or b["mismatches"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
