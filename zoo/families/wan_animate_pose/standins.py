"""Stand-ins for Wan-Animate's two preprocessing graphs (WAN_PREPROCESS.md 2, 3 and 12): ONNX
models with exactly the real files' input and output names, shapes and dtypes, whose outputs are
deterministic functions of the pixels, built op by op with :mod:`zoo.models.onnx_graph`.

- :func:`detector_graph`: ``det/yolov10m.onnx`` (2.2, 2.3), Ultralytics' YOLOv10 export:
  ``images`` float32 [1,3,640,640] (RGB 0..1) -> ``output0`` float32 [1,300,6], rows
  ``x1, y1, x2, y2, score, class`` in 640-input pixels, sorted by score.
- :func:`vitpose_graph`: ``pose2d/vitpose_h_wholebody.onnx`` (3.3, 3.4): ``input`` float32
  [1,3,256,192] (a normalised BGR crop) -> ``output`` float32 [1,133,64,48] heatmaps.

``size="tiny"`` (tests, ``zoo random``): small graphs, seconds to build and milliseconds to run.
``size="bench"``: the same inputs and outputs and the same content-following outputs, plus random
(seeded) weights of about the real models' parameter count and compute on the path to the output
(YOLOv10-M ~15.4M parameters / ~59 GFLOPs; ViTPose-H ~632M parameters, a ViT-H), for benchmarks.
A bench ViTPose is over 2 GB: :func:`save_graph` writes it with external data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from zoo.models.onnx_graph import GraphBuilder

if TYPE_CHECKING:
    import onnx

DETECTOR_SIZE = 640  # 2.2: the detector's input, hard-coded in the original
DETECTOR_ROWS = 300  # 2.3: YOLOv10's NMS-free output rows
POSE_HEIGHT, POSE_WIDTH = 256, 192  # 3.1: ViTPose's input (H, W)
HEAT_HEIGHT, HEAT_WIDTH = 64, 48  # 3.4: its heatmaps
KEYPOINTS = 133  # 3.5: COCO-WholeBody
SIZES = ("tiny", "bench")
EXTERNAL_DATA_ABOVE = (
    1_800_000_000  # bytes of tensors above which save_graph writes external data (2 GiB protobuf limit)
)

_CELL = 32  # the detector's grid: 20 x 20 cells of 32 x 32 input pixels
_CELLS = DETECTOR_SIZE // _CELL
_SEEDS = _CELLS * _CELLS  # one candidate row per cell; the best 300 are the output
_GROWTH = _CELLS  # steps of the per-cell region growing: enough to cross the grid


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, not {size!r}")


# --------------------------------------------------------------------------------------
# Big random weights: written straight into the model's initializers, one tensor at a time
# --------------------------------------------------------------------------------------


class _Weights:
    """Random float32 initializers for the bench graphs, declared while the nodes are built and
    generated only when the model exists (:meth:`fill`): each tensor is drawn and copied into
    ``model.graph.initializer`` on its own, so the weights are never held twice."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.pending: list[tuple[str, tuple[int, ...], float]] = []

    def __call__(self, shape: tuple[int, ...], std: float) -> str:
        """Declare a ``normal(0, std)`` tensor of ``shape`` (std 0: zeros) and return its name."""
        name = f"{self.prefix}_w{len(self.pending)}"
        self.pending.append((name, shape, std))
        return name

    @property
    def count(self) -> int:
        return sum(math.prod(shape) for _, shape, _ in self.pending)

    def fill(self, model: onnx.ModelProto, rng: np.random.Generator) -> None:
        from onnx import TensorProto

        for name, shape, std in self.pending:
            tensor = model.graph.initializer.add()
            tensor.name = name
            tensor.data_type = TensorProto.FLOAT
            tensor.dims.extend(shape)
            if std == 0:
                tensor.raw_data = bytes(4 * math.prod(shape))
            else:
                array = rng.standard_normal(shape, dtype=np.float32)
                array *= np.float32(std)
                tensor.raw_data = array.astype("<f4", copy=False).tobytes()
                del array


def parameter_count(model: onnx.ModelProto) -> int:
    """The number of elements of all initializers (inline or external)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)


def _tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_graph(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model`` to ``path``: plainly, or, when its tensors are above 1.8 GB (the protobuf
    limit is 2 GiB), with all tensors in one external file ``path.name + ".data"`` beside it (an
    existing one is replaced). Saving with external data moves the tensors out of ``model``: it
    then refers to the file."""
    import onnx

    path = Path(path)
    if _tensor_bytes(model) <= EXTERNAL_DATA_ABOVE:
        onnx.save_model(model, str(path))
        return
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)  # onnx appends to an existing file
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)


# --------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------


def _detector_rows(g: GraphBuilder, seed: int, extra_score: str | None) -> str:
    """The content-following part of the detector: [1, 400, 6] candidate rows, one per grid cell.

    Pixel cues (channels weighted unequally, so RGB and BGR differ): ``white`` = every channel
    bright, ``colour`` = saturated and bright. A cell is on when its mean cue is above 0.3, of the
    class whose cue is larger (white: 0, person; colour: 1). Each cell's region is grown over the
    on cells of its class (3x3 max-pool steps); the box is the extent of the cue's pixels in the
    region's rows and columns (a cell margin around them): per pixel column the cue summed over the
    region's rows, a column counting where that sum is above a quarter of its maximum. The score is
    ``0.15 + 0.8 * q * (1 - 0.6 d)`` with ``q`` the cue's 3x3-cell mean round the cell and ``d`` the
    cell's distance from the box centre (relative to the box size), so a region's centre cell ranks
    first and its other cells are lower duplicates, jittered (seeded) in proportion to ``d``: NMS
    keeps one. Cells that are off score below 0.05 (a box round the cell itself)."""
    rng = np.random.default_rng(seed)
    size, cells, seeds = DETECTOR_SIZE, _CELLS, _SEEDS
    weighted = g.op("Mul", "images", g.const(np.array([1.0, 0.96, 0.92]).reshape(1, 3, 1, 1)))
    low = g.op("ReduceMin", weighted, axes=[1], keepdims=1)
    high = g.op("ReduceMax", weighted, axes=[1], keepdims=1)
    white = g.op("Sigmoid", g.op("Mul", g.op("Sub", low, g.const(0.6)), g.const(16.0)))  # [1,1,640,640]
    saturated = g.op("Sigmoid", g.op("Mul", g.op("Sub", g.op("Sub", high, low), g.const(0.45)), g.const(16.0)))
    lit = g.op("Sigmoid", g.op("Mul", g.op("Sub", high, g.const(0.5)), g.const(16.0)))
    colour = g.op("Mul", saturated, lit)
    one = g.const(1.0)

    def cells_of(x: str) -> str:
        return g.op("AveragePool", x, kernel_shape=[_CELL, _CELL], strides=[_CELL, _CELL])  # [1,1,20,20]

    white_cells, colour_cells = cells_of(white), cells_of(colour)
    on_white = g.op("Cast", g.op("Greater", white_cells, g.const(0.3)), to=1)
    on_colour = g.op("Cast", g.op("Greater", colour_cells, g.const(0.3)), to=1)
    is_white = g.op("Cast", g.op("GreaterOrEqual", white_cells, colour_cells), to=1)
    is_colour = g.op("Sub", one, is_white)

    def pick(a: str, b: str, which: str, other: str) -> str:  # which * a + other * b
        return g.op("Add", g.op("Mul", which, a), g.op("Mul", other, b))

    on = pick(on_white, on_colour, is_white, is_colour)  # [1,1,20,20]
    value = pick(white_cells, colour_cells, is_white, is_colour)
    quality = g.op("AveragePool", value, kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=0)

    def per_seed(x: str, shape: list[int]) -> str:  # a [1,1,20,20] cell map as one value per seed
        return g.op("Reshape", x, g.const(shape))

    seed_white = per_seed(is_white, [1, seeds, 1, 1])
    seed_colour = g.op("Sub", one, seed_white)
    seed_on = per_seed(on, [1, seeds, 1, 1])
    # seed s: a one-hot [20, 20] map of its cell
    index = np.arange(seeds)
    start = g.op(
        "Reshape",
        g.op("Cast", g.op("Equal", g.const(index.reshape(seeds, 1)), g.const(index.reshape(1, seeds))), to=1),
        g.const([1, seeds, cells, cells]),
    )
    mask = g.op("Mul", pick(on_white, on_colour, seed_white, seed_colour), seed_on)  # [1,400,20,20]
    region = start
    for _ in range(_GROWTH):
        grown = g.op("MaxPool", region, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        region = g.op("Max", g.op("Mul", grown, mask), start)
    # the region's rows and columns, one cell of margin, as pixel selections [1,400,640]
    expand = np.kron(np.eye(cells), np.ones((1, _CELL)))  # [20, 640]

    def pixels(profile: str) -> str:
        margin = g.op("MaxPool", profile, kernel_shape=[3], pads=[1, 1])
        return g.op("MatMul", margin, g.const(expand))

    rows = pixels(g.op("ReduceMax", region, axes=[3], keepdims=0))
    columns = pixels(g.op("ReduceMax", region, axes=[2], keepdims=0))
    seed_cell_x = g.op("MatMul", g.op("ReduceMax", start, axes=[2], keepdims=0), g.const(expand))
    seed_cell_y = g.op("MatMul", g.op("ReduceMax", start, axes=[3], keepdims=0), g.const(expand))
    seed_white3 = per_seed(is_white, [1, seeds, 1])
    seed_colour3 = g.op("Sub", one, seed_white3)
    seed_off3 = g.op("Sub", one, per_seed(on, [1, seeds, 1]))
    ramp = np.arange(size, dtype=np.float64).reshape(1, 1, size)
    extents = []
    for along, across, seed_cell, transpose in (
        (columns, rows, seed_cell_x, False),
        (rows, columns, seed_cell_y, True),
    ):
        sums = []
        for cue in (white, colour):
            image = g.op("Reshape", cue, g.const([1, size, size]))
            if transpose:
                image = g.op("Transpose", image, perm=[0, 2, 1])
            sums.append(g.op("MatMul", across, image))  # per pixel column (row): the cue over the region's rows
        total = g.op("Mul", pick(sums[0], sums[1], seed_white3, seed_colour3), along)
        peak = g.op("ReduceMax", total, axes=[2], keepdims=1)
        inside = g.op("Cast", g.op("Greater", total, g.op("Add", g.op("Mul", peak, g.const(0.25)), g.const(0.5))), to=1)
        inside = g.op("Max", inside, g.op("Mul", seed_cell, seed_off3))  # off cells: the cell itself
        end = g.op("ReduceMax", g.op("Mul", inside, g.const(ramp + 1)), axes=[2], keepdims=1)
        begin = g.op(
            "Sub",
            g.const(float(size)),
            g.op("ReduceMax", g.op("Mul", inside, g.const(size - ramp)), axes=[2], keepdims=1),
        )
        extents.append((begin, end))  # [1,400,1] each
    (x1, x2), (y1, y2) = extents
    width, height = g.op("Sub", x2, x1), g.op("Sub", y2, y1)
    centres = (np.arange(cells) + 0.5) * _CELL
    cell_x = g.const(np.tile(centres, cells).reshape(1, seeds, 1))
    cell_y = g.const(np.repeat(centres, cells).reshape(1, seeds, 1))
    half = g.const(0.5)
    distance = g.op(
        "Add",
        g.op(
            "Div",
            g.op("Abs", g.op("Sub", cell_x, g.op("Mul", g.op("Add", x1, x2), half))),
            g.op("Add", width, g.const(float(_CELL))),
        ),
        g.op(
            "Div",
            g.op("Abs", g.op("Sub", cell_y, g.op("Mul", g.op("Add", y1, y2), half))),
            g.op("Add", height, g.const(float(_CELL))),
        ),
    )  # [1,400,1], 0 at the box centre, about 1 at a corner
    near = g.op("Sub", one, g.op("Mul", distance, g.const(0.6)))
    strong = g.op("Add", g.const(0.15), g.op("Mul", g.op("Mul", per_seed(quality, [1, seeds, 1]), near), g.const(0.8)))
    weak = g.op("Mul", per_seed(value, [1, seeds, 1]), g.const(0.04))
    score = pick(weak, strong, seed_off3, g.op("Sub", one, seed_off3))
    if extra_score is not None:
        score = g.op("Add", score, extra_score)
    jitter = g.const(rng.uniform(-0.08, 0.08, (1, seeds, 4)))
    size_4 = g.op("Concat", width, height, width, height, axis=2)
    box = g.op("Concat", x1, y1, x2, y2, axis=2)
    box = g.op("Add", box, g.op("Mul", g.op("Mul", jitter, size_4), distance))
    box = g.op("Min", g.op("Max", box, g.const(0.0)), g.const(float(size)))
    return g.op("Concat", box, score, g.op("Sub", one, seed_white3), axis=2)  # [1,400,6]


def _conv_stack(g: GraphBuilder, w: _Weights, x: str) -> str:
    """YOLOv10-M-sized compute: 3x3 convolutions with ReLU, strides 2 to 1/32 (about 15.6M
    parameters, 29 GMACs = 58 GFLOPs at 640), reduced to one value [1]."""
    plan = [(48, 2, 1), (96, 2, 5), (192, 2, 2), (384, 2, 2), (576, 2, 3)]  # (channels, stride, 3x3 convs after)
    channels = 3
    for out, stride, repeats in plan:
        for i in range(1 + repeats):
            s = stride if i == 0 else 1
            weight = w((out, channels, 3, 3), math.sqrt(2.0 / (channels * 9)))
            bias = w((out,), 0.0)
            x = g.op("Relu", g.op("Conv", x, weight, bias, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[s, s]))
            channels = out
    return g.op("ReduceMean", x, axes=[1, 2, 3], keepdims=0)  # [1]


def detector_graph(seed: int = 0, size: str = "tiny") -> onnx.ModelProto:
    """A stand-in ``det/yolov10m.onnx`` (2.2, 2.3): ``images`` float32 [1,3,640,640] (RGB 0..1) ->
    ``output0`` float32 [1,300,6], rows ``x1, y1, x2, y2, score, class`` in input pixels, sorted by
    score (TopK of the 400 per-cell candidates of :func:`_detector_rows`).

    White blobs are people (class 0), a saturated coloured blob is class 1 (it takes part in NMS,
    2.6); each blob gives one top row (its centre cell) and lower-scored jittered duplicates; every
    other row scores below 0.05. ``size="bench"`` adds a YOLOv10-M-sized convolution stack whose
    mean (times 1e-6, through tanh) is added to the scores, so ONNX Runtime cannot drop it."""
    from onnx import TensorProto, helper

    _check_size(size)
    g = GraphBuilder("det")
    weights = _Weights("det")
    extra = None
    if size == "bench":
        pooled = _conv_stack(g, weights, "images")
        extra = g.op("Mul", g.op("Tanh", g.op("Reshape", pooled, g.const([1, 1, 1]))), g.const(1e-6))
    rows = _detector_rows(g, seed, extra)
    scores = g.op("Reshape", g.op("Slice", rows, g.const([4]), g.const([5]), g.const([2])), g.const([1, _SEEDS]))
    g.op("TopK", scores, g.const([DETECTOR_ROWS]), axis=1)
    order = f"{g.prefix}_order"
    g.nodes[-1].output.append(order)  # TopK's second output: the indices [1, 300]
    g.op("Gather", g.op("Reshape", rows, g.const([_SEEDS, 6])), order, axis=0, output="output0")
    model = g.model(
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, DETECTOR_SIZE, DETECTOR_SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, DETECTOR_ROWS, 6])],
        "yolov10m_stand_in" if size == "bench" else "yolov10_stand_in",
    )
    weights.fill(model, np.random.default_rng(seed + 100))
    return model


# --------------------------------------------------------------------------------------
# ViTPose
# --------------------------------------------------------------------------------------

# Where the body keypoints sit in a person's box (x, y in [0, 1]), facing the camera (their left on
# the image's right): COCO body wb 0-16, then feet wb 17-22 (3.5).
_BODY = [
    (0.50, 0.08), (0.53, 0.06), (0.47, 0.06), (0.56, 0.07), (0.44, 0.07),  # nose, eyes, ears
    (0.66, 0.20), (0.34, 0.20), (0.76, 0.35), (0.24, 0.35), (0.80, 0.48), (0.20, 0.48),  # arms
    (0.60, 0.52), (0.40, 0.52), (0.60, 0.72), (0.40, 0.72), (0.60, 0.90), (0.40, 0.90),  # legs
    (0.63, 0.97), (0.66, 0.96), (0.58, 0.94), (0.37, 0.97), (0.34, 0.96), (0.42, 0.94),  # feet
]  # fmt: skip


def _keypoint_layout(rng: np.random.Generator) -> np.ndarray:
    """[133, 2]: each keypoint's place in a person's box (x, y in [0, 1]): the body of
    :data:`_BODY`, the 68 face landmarks round the nose (jaw arc, brows, nose, eyes, mouth), each
    hand's 21 points fanned downwards from its wrist; jittered by ``rng``."""
    places = list(_BODY)
    nose_x, nose_y = _BODY[0]
    face: list[tuple[float, float]] = []
    for i in range(17):  # jaw, from the right ear round the chin to the left
        angle = math.pi * (1.0 - i / 16)
        face.append((nose_x + 0.045 * math.cos(angle), nose_y + 0.035 * math.sin(angle) * 1.2 + 0.005))
    for i in range(10):  # brows
        face.append((nose_x - 0.035 + 0.0078 * i, nose_y - 0.03))
    for i in range(9):  # nose bridge and nostrils
        face.append((nose_x + (0.0 if i < 4 else 0.004 * (i - 6)), nose_y - 0.02 + 0.005 * min(i, 4)))
    for i in range(12):  # eyes: 6 points round each
        cx = nose_x - 0.018 if i < 6 else nose_x + 0.018
        angle = 2 * math.pi * (i % 6) / 6
        face.append((cx + 0.008 * math.cos(angle), nose_y - 0.018 + 0.003 * math.sin(angle)))
    for i in range(20):  # mouth: outer 12, inner 8
        angle = 2 * math.pi * (i / 12 if i < 12 else (i - 12) / 8)
        radius = 0.015 if i < 12 else 0.009
        face.append((nose_x + radius * math.cos(angle), nose_y + 0.02 + 0.4 * radius * math.sin(angle)))
    places += face
    for wrist in (_BODY[9], _BODY[10]):  # left hand (wb 91-111), then right (112-132)
        places.append(wrist)
        outward = 1.0 if wrist[0] > 0.5 else -1.0
        for finger in range(5):
            angle = math.pi / 2 - outward * (finger - 2) * 0.3
            for joint in range(1, 5):
                reach = 0.012 * (joint + 1)
                places.append((wrist[0] + reach * math.cos(angle) * 0.6, wrist[1] + reach * math.sin(angle)))
    layout = np.array(places, dtype=np.float64)
    return layout + rng.normal(0.0, 0.006, layout.shape)


def _heatmaps(g: GraphBuilder, seed: int) -> str:
    """The content-following heatmaps [B,133,64,48] of the ViTPose stand-in (every op per batch item).

    Brightness = ``sigmoid(2.5 (0.5 c0 + 0.3 c1 + 0.2 c2 - 1))`` of the normalised crop (channels
    weighted unequally, so BGR and RGB differ; white 0.97, grey 215 0.85, grey 180 0.55, dark ~0),
    averaged to the 64x48 heatmap cells. Its centroid ``(cx, cy)`` and spread ``(sx, sy)`` place
    each keypoint at ``c + o_k s`` with ``o_k`` the keypoint's place in a person's box in spread
    units (:func:`_keypoint_layout`, seeded). The heatmap is ``a_k G_k - c_k``: ``G_k`` a Gaussian
    of sigma 2 cells round the place, ``a_k = scale_k l_k - bias_k`` with ``l_k`` the brightness
    round the place (a Gaussian of sigma 3 cells, normalised to 1 inside a bright area), ``c_k``
    0.005 to 0.02; the maximum (the score) is about
    ``a_k - c_k``. About one keypoint in eight of the body and hands (never the face) has a bias of
    0.3 to 0.55, so its heatmap is all negative on dimmer crops (the -1 decode path, 3.4 step 1); a
    crop without bright pixels gives all-negative heatmaps."""
    rng = np.random.default_rng(seed + 1)
    layout = _keypoint_layout(rng)
    offsets = (layout - 0.5) * math.sqrt(12.0)  # in units of a uniform box's standard deviation
    scale = rng.uniform(0.5, 1.0, KEYPOINTS)
    floor = rng.uniform(0.005, 0.02, KEYPOINTS)
    bias = rng.uniform(0.0, 0.05, KEYPOINTS)
    candidates = np.r_[np.arange(23), np.arange(91, 133)]
    dark = rng.choice(candidates, size=len(candidates) // 8, replace=False)
    bias[dark] = rng.uniform(0.3, 0.55, dark.size)
    eps = 1e-3
    gray = g.op("Conv", "input", g.const(np.array([0.5, 0.3, 0.2]).reshape(1, 3, 1, 1)))
    bright = g.op("Sigmoid", g.op("Mul", g.op("Sub", gray, g.const(1.0)), g.const(2.5)))
    cells = g.op("AveragePool", bright, kernel_shape=[4, 4], strides=[4, 4])  # [B,1,64,48]
    xs = g.const(np.arange(HEAT_WIDTH, dtype=np.float64).reshape(1, 1, 1, HEAT_WIDTH))
    ys = g.const(np.arange(HEAT_HEIGHT, dtype=np.float64).reshape(1, 1, HEAT_HEIGHT, 1))
    plane = g.const([2, 3])

    def total(x: str) -> str:
        return g.op("ReduceSum", x, plane, keepdims=1)  # [B,*,1,1]

    mass = g.op("Add", total(cells), g.const(eps))
    places = []
    for ramp, middle, column in ((xs, (HEAT_WIDTH - 1) / 2, 0), (ys, (HEAT_HEIGHT - 1) / 2, 1)):
        first = total(g.op("Mul", cells, ramp))
        second = total(g.op("Mul", cells, g.op("Mul", ramp, ramp)))
        centre = g.op("Div", g.op("Add", first, g.const(eps * middle)), mass)
        moment = g.op("Div", g.op("Add", second, g.const(eps * (middle * middle + 100.0))), mass)
        spread = g.op("Sqrt", g.op("Max", g.op("Sub", moment, g.op("Mul", centre, centre)), g.const(1.0)))
        offset = g.const(offsets[:, column].reshape(1, KEYPOINTS, 1, 1))
        places.append(g.op("Add", centre, g.op("Mul", offset, spread)))  # [B,133,1,1]

    def gaussian(ramp: str, place: str, sigma: float) -> str:
        d = g.op("Sub", ramp, place)
        return g.op("Exp", g.op("Mul", g.op("Mul", d, d), g.const(-1.0 / (2 * sigma * sigma))))

    peak = g.op("Mul", gaussian(xs, places[0], 2.0), gaussian(ys, places[1], 2.0))  # [B,133,64,48]
    around = g.op("Mul", gaussian(xs, places[0], 3.0), gaussian(ys, places[1], 3.0))
    local = g.op("Mul", total(g.op("Mul", around, cells)), g.const(1.0 / (2 * math.pi * 9.0)))  # [B,133,1,1]
    height = g.op("Mul", local, g.const(scale.reshape(1, KEYPOINTS, 1, 1)))
    height = g.op("Sub", height, g.const(bias.reshape(1, KEYPOINTS, 1, 1)))
    return g.op("Sub", g.op("Mul", peak, height), g.const(floor.reshape(1, KEYPOINTS, 1, 1)))


def _vit_h(g: GraphBuilder, w: _Weights, x: str) -> str:
    """ViTPose-H's compute on the crop: patch 16 (16x12 = 192 tokens), width 1280, 32 blocks
    (16 heads, MLP 5120, pre-norm), then two 4x4 stride-2 deconvolutions (256 channels, ReLU) and a
    1x1 convolution to [B,133,64,48] (about 637M parameters)."""
    width, depth, heads, hidden, tokens = 1280, 32, 16, 5120, (POSE_HEIGHT // 16) * (POSE_WIDTH // 16)
    head_dim = width // heads
    std = 0.02

    def linear(x: str, n_in: int, n_out: int) -> str:
        return g.op("Add", g.op("MatMul", x, w((n_in, n_out), std)), w((n_out,), 0.0))

    def norm(x: str) -> str:
        gamma = g.const(np.ones(width, dtype=np.float32))
        beta = g.const(np.zeros(width, dtype=np.float32))
        return g.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=1e-6)

    patches = g.op("Conv", x, w((width, 3, 16, 16), std), w((width,), 0.0), kernel_shape=[16, 16], strides=[16, 16])
    h = g.op("Transpose", g.op("Reshape", patches, g.const([0, width, tokens])), perm=[0, 2, 1])  # [B,192,1280]
    h = g.op("Add", h, w((1, tokens, width), std))
    for _ in range(depth):
        qkv = g.op("Reshape", linear(norm(h), width, 3 * width), g.const([0, tokens, 3, heads, head_dim]))
        qkv = g.op("Transpose", qkv, perm=[2, 0, 3, 1, 4])  # [3,B,16,192,80]
        q, k, v = (g.op("Gather", qkv, g.const(np.array(i, dtype=np.int64)), axis=0) for i in range(3))
        logits = g.op("MatMul", q, g.op("Transpose", k, perm=[0, 1, 3, 2]))
        attention = g.op("Softmax", g.op("Mul", logits, g.const(1.0 / math.sqrt(head_dim))), axis=-1)
        mixed = g.op("Transpose", g.op("MatMul", attention, v), perm=[0, 2, 1, 3])
        h = g.op("Add", h, linear(g.op("Reshape", mixed, g.const([0, tokens, width])), width, width))
        m = linear(norm(h), width, hidden)
        m = g.op("Mul", m, g.op("Sigmoid", g.op("Mul", m, g.const(1.702))))  # GELU (sigmoid form)
        h = g.op("Add", h, linear(m, hidden, width))
    h = g.op("Transpose", norm(h), perm=[0, 2, 1])
    h = g.op("Reshape", h, g.const([0, width, POSE_HEIGHT // 16, POSE_WIDTH // 16]))
    channels = width
    for _ in range(2):
        h = g.op(
            "ConvTranspose",
            h,
            w((channels, 256, 4, 4), 0.001),
            w((256,), 0.0),
            kernel_shape=[4, 4],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
        )
        h = g.op("Relu", h)
        channels = 256
    return g.op("Conv", h, w((KEYPOINTS, 256, 1, 1), 0.001), w((KEYPOINTS,), 0.0), kernel_shape=[1, 1])


def vitpose_graph(seed: int = 0, size: str = "tiny") -> onnx.ModelProto:
    """A stand-in ``pose2d/vitpose_h_wholebody.onnx`` (3.3, 3.4): ``input`` float32 [1,3,256,192]
    (a normalised BGR crop) -> ``output`` float32 [1,133,64,48] heatmaps (:func:`_heatmaps`):
    per keypoint a Gaussian peak (sigma 2 cells, smooth for the DARK step) whose place follows the
    crop's bright pixels and whose height (the score) follows their brightness round it.

    Every op computes each batch item on its own (no Resize), so with the batch dim freed a batch
    equals its items bit for bit on ONNX Runtime CPU; the input is [1,...] as exported.
    ``size="bench"`` adds a ViT-H (:func:`_vit_h`) whose heatmaps, times 1e-5, are added to the
    output, so ONNX Runtime cannot drop it."""
    from onnx import TensorProto, helper

    _check_size(size)
    g = GraphBuilder("vitpose")
    weights = _Weights("vitpose")
    heat = _heatmaps(g, seed)
    if size == "bench":
        heat = g.op("Add", heat, g.op("Mul", _vit_h(g, weights, "input"), g.const(1e-5)))
    g.op("Identity", heat, output="output")
    model = g.model(
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, POSE_HEIGHT, POSE_WIDTH])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, KEYPOINTS, HEAT_HEIGHT, HEAT_WIDTH])],
        "vitpose_h_wholebody_stand_in" if size == "bench" else "vitpose_wholebody_stand_in",
    )
    weights.fill(model, np.random.default_rng(seed + 200))
    return model
