"""unianimate-pose: the two ONNX graphs of UniAnimate-DiT's pose step (``../shared/design/POSE.md``),
a family of imported graphs.

The components are not traced from torch: they are the user's own files, the ones the original's
``run_align_pose.py`` opens from its checkpoint folder, checked against what POSE.md says they are
and copied into the export (:class:`zoo.contract.ImportedGraph`). Their reference is each file
itself on ONNX Runtime CPU.

- ``detector``: YOLOX-L person detector ``yolox_l.onnx`` (POSE.md 1.1): ``images`` float32
  [1,3,640,640] (a letterboxed BGR image, 0..255) -> ``output`` float32 [1,8400,85] (per anchor, box
  regression, objectness, 80 class probabilities). Static: the original hard-codes 640x640, batch 1.
- ``pose_model``: DWPose whole-body model ``dw-ll_ucoco_384.onnx`` (POSE.md 2.1): ``input`` float32
  [B,3,384,288] (a normalised crop) -> ``simcc_x`` [B,133,576], ``simcc_y`` [B,133,768]. The
  original runs one crop per call; the export makes B dynamic (``--batch``) only where the given
  graph computes every crop on its own (a batch equals its crops run one by one, bit for bit).

Sources: ``--model DIR`` (the original's checkpoint folder, where both files are found by name) or
``--detector FILE --pose-model FILE`` (either one also overrides the folder's file). The reference
records the two files, not the folder, so the manifest hashes exactly them.

``zoo random unianimate-pose`` writes stand-ins with exactly the real graphs' inputs and outputs,
whose outputs are deterministic functions of the image (POSE.md 8), built with ``onnx.helper``
(:func:`detector_graph`, :func:`pose_graph`). There is no sampler: ``zoo pose`` is the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from zoo.contract import (
    Axis,
    Component,
    Dim,
    Envelope,
    Family,
    HostModules,
    ImportedGraph,
    Modules,
    PoseStep,
    Range,
    Reference,
    Source,
    SourceRole,
    Sources,
    TensorSpec,
    specs,
)
from zoo.families.unianimate_pose.dwpose import (
    DETECTOR_ANCHORS,
    DETECTOR_SIZE,
    POSE_MEAN,
    POSE_STD,
    SIMCC_SPLIT_RATIO,
    WHOLEBODY_POINTS,
)
from zoo.families.unianimate_pose.step import POSE_OPTIONS, is_pose_output, pose_step
from zoo.infra.checkpoint import graph_files, write_random_marker
from zoo.models.onnx_graph import GraphBuilder, sigmoid

if TYPE_CHECKING:
    import onnx

DETECTOR_FILE = "yolox_l.onnx"  # the names run_align_pose.py opens in its checkpoint folder
POSE_MODEL_FILE = "dw-ll_ucoco_384.onnx"
FILES = {"detector": DETECTOR_FILE, "pose_model": POSE_MODEL_FILE}

# the pose step's constants (POSE.md 1.1, 2.1, 2.4), stated once in dwpose.py
ANCHORS = DETECTOR_ANCHORS  # 6400 + 1600 + 400 = 8400
POSE_HEIGHT, POSE_WIDTH = 384, 288  # POSE.md 2.1: (H_in, W_in)
KEYPOINTS = WHOLEBODY_POINTS  # COCO-WholeBody
SIMCC_SPLIT = int(SIMCC_SPLIT_RATIO)  # bins per pixel of the SimCC head


# --------------------------------------------------------------------------------------
# Sample inputs (parity, the batch check): images with bright blobs, as the pose step feeds them
# --------------------------------------------------------------------------------------


def _blobs(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """BGR images 0..255 (float) of ``shape`` [N,3,H,W]: a dim noisy background and one bright
    rectangle per image at a random place and size (a person, for the stand-ins)."""
    n, _, h, w = shape
    out = torch.randint(0, 100, shape, generator=gen).float()
    for i in range(n):
        bh = int(torch.randint(h // 6, h // 2 + 1, (1,), generator=gen))
        bw = int(torch.randint(w // 8, w // 3 + 1, (1,), generator=gen))
        y = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
        out[i, :, y : y + bh, x : x + bw] = torch.randint(190, 256, (3, bh, bw), generator=gen).float()
    return out


def letterboxed_image(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """A detector feed: a BGR image 0..255 in the top-left of a 114-grey letterbox (POSE.md 1.2)."""
    image = torch.full(shape, 114.0)
    rows = int(torch.randint(shape[2] // 2, shape[2] + 1, (1,), generator=gen))
    image[:, :, :rows, :] = _blobs((shape[0], shape[1], rows, shape[3]), gen)
    return image


def normalised_crop(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """A pose-model feed: BGR crops 0..255 normalised per channel index (POSE.md 2.4)."""
    mean = torch.tensor(POSE_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(POSE_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return ((_blobs(shape, gen).double() - mean) / std).float()


# --------------------------------------------------------------------------------------
# The declaration
# --------------------------------------------------------------------------------------


def _pose_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return {"batch": Dim.of_range("batch", env["batch"])}


DETECTOR = Component(
    name="detector",
    tolerance="person_detector",
    module="detector",
    inputs=specs(TensorSpec("images", "float32", (1, 3, DETECTOR_SIZE, DETECTOR_SIZE), sample=letterboxed_image)),
    outputs=specs(TensorSpec("output", "float32", (1, ANCHORS, 85))),
    dims=lambda env, ref: {},
    graph=ImportedGraph(source="detector"),
)

POSE_MODEL = Component(
    name="pose_model",
    tolerance="pose_estimator",
    module="pose_model",
    inputs=specs(TensorSpec("input", "float32", ("batch", 3, POSE_HEIGHT, POSE_WIDTH), sample=normalised_crop)),
    outputs=specs(
        TensorSpec("simcc_x", "float32", ("batch", KEYPOINTS, SIMCC_SPLIT * POSE_WIDTH)),
        TensorSpec("simcc_y", "float32", ("batch", KEYPOINTS, SIMCC_SPLIT * POSE_HEIGHT)),
    ),
    dims=_pose_dims,
    graph=ImportedGraph(source="pose_model", batch="batch"),
)


class UniAnimatePose(Family):
    name = "unianimate-pose"
    description = "UniAnimate-DiT's pose step: DWPose's person detector and whole-body pose model (imported ONNX)"
    variants = ("dwpose",)
    components = (DETECTOR, POSE_MODEL)
    model_required = False  # --detector FILE --pose-model FILE make a reference on their own
    source_roles = (
        SourceRole(
            "detector", f"The YOLOX person detector ({DETECTOR_FILE}); beside --model: instead of its file.", "file"
        ),
        SourceRole(
            "pose_model",
            f"The DWPose whole-body model ({POSE_MODEL_FILE}); beside --model: instead of its file.",
            "file",
        ),
    )
    axis_help = {
        "batch": "MIN:OPT:MAX crops per pose-model call (people or frames); kept at 1 where the given graph "
        "does not compute each crop on its own."
    }

    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        return (Axis("batch", Range(1, 4, 16), ceiling=256, unit="crops"),)

    # ``zoo pose``: the original's run_align_pose.py on the export's runners (step.py)
    pose_options = POSE_OPTIONS

    def pose_step(self, options: Mapping[str, Any], host: HostModules) -> PoseStep:
        return pose_step(options)  # the step runs its two graphs only: no host module

    def is_pose_output(self, folder: Path) -> bool:
        return is_pose_output(folder)

    def load_sources(self, sources: Sources) -> Reference:
        """The two graphs' files: from ``--model DIR`` by name, or as given (a given one wins)."""
        files = graph_files(
            sources, FILES, family=self.name, folder_is=f"the folder holding {DETECTOR_FILE} and {POSE_MODEL_FILE}"
        )
        return Reference("dwpose", tuple(Source(role, path) for role, path in files.items()), Modules({}))

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """The original's checkpoint folder with stand-ins of both graphs (POSE.md 8)."""
        import onnx

        variant = self.random_choice(variant, preset)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        onnx.save(detector_graph(seed), str(dest / DETECTOR_FILE))
        onnx.save(pose_graph(seed), str(dest / POSE_MODEL_FILE))
        write_random_marker(dest, family=self.name, variant=variant, preset=preset, seed=seed)
        return dest


# --------------------------------------------------------------------------------------
# Stand-ins: the real graphs' inputs and outputs, outputs a deterministic function of the image
# --------------------------------------------------------------------------------------


def detector_graph(seed: int = 0) -> onnx.ModelProto:
    """A stand-in ``yolox_l.onnx``: ``images`` [1,3,640,640] -> ``output`` [1,8400,85], YOLOX's layout
    (stride 8, 16, 32 grids, row-major; box regression, objectness, 80 class probabilities).

    Bright blobs are objects (some channel bright), white ones people. Per stride ``s`` and grid cell: the box centre is the centroid of the
    bright pixels in the horizontal (x) and vertical (y) strip through the cell, 16s long (decoded
    as ``(o + grid) * s``); its width and height 16s times the bright fraction of those strips
    (decoded as ``exp(o) * s``); objectness the brightness of the 4s window and its contrast with
    the 8s one, on the level whose strips the blob fits (2s to 10s long); class 0 (person) the whiteness of the 4s window (every channel bright), class 1
    its colourfulness (a saturated blob is detected, then dropped by the class filter), the other
    78 small. The letterbox's 114 grey is dim: it is never a person, but it enters every mean."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    g = GraphBuilder("det")
    size = DETECTOR_SIZE
    # salient: some channel bright (channels weighted unequally: B, G, R, so BGR and RGB differ)
    weighted = g.op("Mul", "images", g.const(np.array([0.9, 1.0, 1.1]).reshape(1, 3, 1, 1)))
    bright = sigmoid(g, g.op("ReduceMax", weighted, axes=[1], keepdims=1), 1 / 12, 160.0)
    low = g.op("ReduceMin", "images", axes=[1], keepdims=1)
    high = g.op("ReduceMax", "images", axes=[1], keepdims=1)
    white = g.op("Sigmoid", g.op("Mul", g.op("Sub", low, g.const(150.0)), g.const(1 / 12)))
    colour = g.op("Sigmoid", g.op("Mul", g.op("Sub", g.op("Sub", high, low), g.const(90.0)), g.const(1 / 12)))
    centres = np.arange(size, dtype=np.float32) + 0.5
    bright_x = g.op("Mul", bright, g.const(centres.reshape(1, 1, 1, size)))
    bright_y = g.op("Mul", bright, g.const(centres.reshape(1, 1, size, 1)))
    levels = []
    for s in (8, 16, 32):
        cells = size // s
        half = 15 * s // 2  # a strip 16s long, centred on the cell
        inner = g.pool(bright, (4 * s, 4 * s), s, (3 * s // 2, 3 * s // 2))
        surround = g.pool(bright, (8 * s, 8 * s), s, (7 * s // 2, 7 * s // 2))
        row = g.pool(bright, (s, 16 * s), s, (0, half))  # bright fraction of the horizontal strip
        column = g.pool(bright, (16 * s, s), s, (half, 0))
        eps = g.const(1e-6)
        cx = g.op("Div", g.pool(bright_x, (s, 16 * s), s, (0, half)), g.op("Add", row, eps))
        cy = g.op("Div", g.pool(bright_y, (16 * s, s), s, (half, 0)), g.op("Add", column, eps))
        grid = np.arange(cells, dtype=np.float32)
        o0 = g.op("Sub", g.op("Mul", cx, g.const(1 / s)), g.const(grid.reshape(1, 1, 1, cells)))
        o1 = g.op("Sub", g.op("Mul", cy, g.const(1 / s)), g.const(grid.reshape(1, 1, cells, 1)))
        o2 = g.op("Log", g.op("Max", g.op("Mul", row, g.const(16.0)), g.const(1e-2)))
        o3 = g.op("Log", g.op("Max", g.op("Mul", column, g.const(16.0)), g.const(1e-2)))
        # objectness: a bright window brighter than its surround, on the level whose strips the blob
        # fits (longer than 2s, shorter than 10s: a blob larger than that is another level's)
        extent = g.op("Max", row, column)
        fits = g.op("Mul", sigmoid(g, extent, 30.0, 0.6, below=True), sigmoid(g, extent, 30.0, 0.12))
        contrast = g.op(
            "Add", g.op("Mul", inner, g.const(6.0)), g.op("Mul", g.op("Sub", inner, surround), g.const(3.0))
        )
        o4 = g.op("Mul", g.op("Sigmoid", g.op("Sub", contrast, g.const(4.0))), fits)
        person = g.pool(white, (4 * s, 4 * s), s, (3 * s // 2, 3 * s // 2))
        other = g.pool(colour, (4 * s, 4 * s), s, (3 * s // 2, 3 * s // 2))
        rest = g.op("Mul", inner, g.const(rng.uniform(0.0, 0.05, (1, 78, 1, 1))))
        level = g.op("Concat", o0, o1, o2, o3, o4, person, other, rest, axis=1)  # [1, 85, G, G]
        flat = g.op("Reshape", level, g.const([1, 85, cells * cells]))
        levels.append(g.op("Transpose", flat, perm=[0, 2, 1]))  # [1, G*G, 85], row-major cells
    g.op("Concat", *levels, axis=1, output="output")
    return g.model(
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, ANCHORS, 85])],
        "yolox_l_stand_in",
    )


# Where each keypoint sits in a person crop (x, y in [0, 1] of the 288x384 crop), for the stand-in's
# priors: COCO body 0-16 of a person facing the camera (their left on the image's right), feet 17-22.
_BODY = [
    (0.50, 0.18), (0.53, 0.16), (0.47, 0.16), (0.56, 0.17), (0.44, 0.17),  # nose, eyes, ears
    (0.62, 0.28), (0.38, 0.28), (0.68, 0.42), (0.32, 0.42), (0.70, 0.54), (0.30, 0.54),  # arms
    (0.57, 0.55), (0.43, 0.55), (0.58, 0.72), (0.42, 0.72), (0.58, 0.86), (0.42, 0.86),  # legs
    (0.60, 0.92), (0.63, 0.91), (0.57, 0.89), (0.40, 0.92), (0.37, 0.91), (0.43, 0.89),  # feet
]  # fmt: skip


def _keypoint_priors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each of the 133 keypoints' place in the crop (x, y in [0, 1]) and spread (in 8-pixel cells):
    body and feet from :data:`_BODY`, the face's 68 on an ellipse round the nose, each hand's 21
    fanned out from its wrist; all jittered by ``rng``."""
    places = list(_BODY)
    for i in range(68):
        angle = 2 * np.pi * i / 68
        places.append((0.50 + 0.05 * np.cos(angle), 0.17 + 0.05 * np.sin(angle)))
    for wrist in (_BODY[9], _BODY[10]):  # left hand (wb 91-111), then right (112-132)
        places.append(wrist)
        for finger in range(5):
            for joint in range(1, 5):
                angle = np.pi / 2 + (finger - 2) * 0.35
                places.append((wrist[0] + 0.012 * joint * np.cos(angle), wrist[1] + 0.012 * joint * np.sin(angle)))
    xy = np.clip(np.array(places) + rng.normal(0.0, 0.01, (KEYPOINTS, 2)), 0.02, 0.98)
    spread = np.concatenate([np.full(23, 3.0), np.full(68, 1.5), np.full(42, 1.5)]) * rng.uniform(0.8, 1.25, KEYPOINTS)
    return xy, spread


def _upsampling(cells: int, bins: int) -> np.ndarray:
    """[cells, bins]: linear interpolation from cell centres to bin centres (edges held)."""
    where = np.clip((np.arange(bins) + 0.5) * cells / bins - 0.5, 0, cells - 1)
    low = np.floor(where).astype(int)
    high = np.minimum(low + 1, cells - 1)
    matrix = np.zeros((cells, bins))
    np.add.at(matrix, (low, np.arange(bins)), 1 - (where - low))
    np.add.at(matrix, (high, np.arange(bins)), where - low)
    return matrix


def pose_graph(seed: int = 0) -> onnx.ModelProto:
    """A stand-in ``dw-ll_ucoco_384.onnx``: ``input`` [1,3,384,288] -> ``simcc_x`` [1,133,576],
    ``simcc_y`` [1,133,768] (batch 1 fixed, as the original's graph is; every crop computed on its own).

    The crop's brightness (channels weighted unequally, so BGR and RGB differ), pooled to 8-pixel
    cells, is weighted per keypoint by a Gaussian prior round the keypoint's usual place in a person
    crop; its sums over rows and over columns, linearly upsampled to the SimCC bins (2 per pixel), are
    the keypoint's x and y vectors (bins round the argmax differ in the last bits only where two cells tie). So the peak (the keypoint) moves towards the bright part of the
    prior, and the maximum (its score) is about ``scale * brightness + offset``: the scales and offsets are
    drawn so that on a bright person the scores spread around POSE.md's 0.3 thresholds, and a few
    keypoints (and every keypoint on a dark crop) have non-positive maxima."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed + 1)
    cells_y, cells_x = POSE_HEIGHT // 8, POSE_WIDTH // 8
    xy, spread = _keypoint_priors(rng)
    yy, xx = np.meshgrid(np.arange(cells_y) + 0.5, np.arange(cells_x) + 0.5, indexing="ij")
    px, py = xy[:, 0] * cells_x, xy[:, 1] * cells_y
    prior = np.exp(
        -((xx[None] - px[:, None, None]) ** 2 + (yy[None] - py[:, None, None]) ** 2) / (2 * spread[:, None, None] ** 2)
    )  # [133, 48, 36]
    scale = rng.uniform(0.45, 0.95, KEYPOINTS)
    offset = rng.uniform(-0.25, 0.0, KEYPOINTS)
    dark = rng.choice(KEYPOINTS, size=KEYPOINTS // 8, replace=False)
    offset[dark] = rng.uniform(-0.8, -0.4, dark.size)  # these stay non-positive on most crops
    g = GraphBuilder("pose")
    gray = g.op("Conv", "input", g.const(np.array([0.5, 0.3, 0.2]).reshape(1, 3, 1, 1)))
    bright = g.op("Sigmoid", g.op("Sub", g.op("Mul", gray, g.const(1.5)), g.const(0.5)))
    pooled = g.op("AveragePool", bright, kernel_shape=[8, 8], strides=[8, 8])  # [1, 1, 48, 36]
    heat = g.op("Mul", pooled, g.const(prior[None]))  # [1, 133, 48, 36]
    for axis, output, bins, total in (
        (2, "simcc_x", SIMCC_SPLIT * POSE_WIDTH, prior.sum(axis=1)),  # a sum over rows: x
        (3, "simcc_y", SIMCC_SPLIT * POSE_HEIGHT, prior.sum(axis=2)),  # over columns: y
    ):
        sums = g.op("ReduceSum", heat, g.const([axis]), keepdims=0)  # [1, 133, cells]
        gain = (scale / total.max(axis=1)).reshape(1, KEYPOINTS, 1)
        vector = g.op("Add", g.op("Mul", sums, g.const(gain)), g.const(offset.reshape(1, KEYPOINTS, 1)))
        # to the SimCC bins by linear interpolation, as a MatMul: ONNX Runtime's Resize gives a
        # batch of crops other last bits than the crops one by one, a MatMul the same
        g.op("MatMul", vector, g.const(_upsampling(total.shape[1], bins)), output=output)
    return g.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, POSE_HEIGHT, POSE_WIDTH])],
        [
            helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, [1, KEYPOINTS, SIMCC_SPLIT * POSE_WIDTH]),
            helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, [1, KEYPOINTS, SIMCC_SPLIT * POSE_HEIGHT]),
        ],
        "dwpose_stand_in",
    )


FAMILY = UniAnimatePose()
