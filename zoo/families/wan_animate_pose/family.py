"""wan-animate-pose: Wan2.2-Animate's preprocessing (``../shared/design/WAN_PREPROCESS.md``), a
family of imported graphs and a pose step.

The components are the two ONNX files of Wan-Animate's ``process_checkpoint`` folder, checked
against what the original's code needs of them and copied into the export
(:class:`zoo.contract.ImportedGraph`); their reference is each file itself on ONNX Runtime CPU:

- ``detector``: YOLOv10-M ``det/yolov10m.onnx`` (2): an RGB image stretched to 640x640, 0..1,
  float32 [1,3,640,640] -> float32 [1,300,6] (NMS-free rows x1, y1, x2, y2, score, class in input
  pixels). Static: the original hard-codes 640x640, batch 1.
- ``pose_model``: ViTPose-H whole-body ``pose2d/vitpose_h_wholebody.onnx`` (3): a normalised BGR
  crop float32 [B,3,256,192] -> heatmaps float32 [B,133,64,48]. The original runs one crop per
  call; the export makes B dynamic (``--batch``) only where the given graph computes every crop on
  its own (bit for bit). ViTPose-H is ~0.6B parameters: its weights are external data (kept so).

The original reads both graphs' input and output names from the session, so the files are matched
by position and the copies renamed to the names declared here (``positional``).

Replace mode's masks come from SAM2 through transformers (``Sam2VideoModel``), given at export with
``--sam2 FOLDER`` (a transformers-format SAM2 checkpoint) and carried in the export as host modules,
or from the user's own ``--mask-video`` at ``zoo pose``.

``zoo random wan-animate-pose`` writes the original's checkpoint layout with stand-ins of both
graphs (the real IO, outputs a function of the image content: :mod:`.standins`), a tiny random
SAM2 folder, and a reference image and driving video to try ``zoo pose`` with.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.contract import (
    Axis,
    Component,
    Dim,
    Envelope,
    Family,
    HostModules,
    ImportedGraph,
    Media,
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
from zoo.families.wan_animate_pose.meta import IMAGENET_MEAN, IMAGENET_STD, WHOLEBODY_POINTS
from zoo.families.wan_animate_pose.step import POSE_OPTIONS, is_pose_output, pose_step
from zoo.families.wan_animate_pose.vitpose import DETECTOR_SIZE, HEATMAP_HW, POSE_INPUT_HW
from zoo.infra.checkpoint import graph_files, write_random_marker

# where the original's preprocess_data.py finds the graphs in its --ckpt_path folder
FILES = {"detector": Path("det") / "yolov10m.onnx", "pose_model": Path("pose2d") / "vitpose_h_wholebody.onnx"}
DETECTIONS = 300  # YOLOv10's NMS-free rows (its export's max_det)
SAM2_MODULE = "sam2"  # a host module: the Sam2VideoModel (its processor is rebuilt from its config)


# --------------------------------------------------------------------------------------
# Sample inputs (parity, the batch check): pictures of white figures and a coloured object
# --------------------------------------------------------------------------------------


def _pictures(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """RGB images 0..255 (float) of ``shape`` [N,3,H,W]: a dark noisy background, a white
    upright rectangle (a person, for the stand-ins) and a smaller saturated one per image."""
    n, _, h, w = shape
    out = torch.randint(0, 80, shape, generator=gen).float()
    for i in range(n):
        for colour, (hmin, hmax, wmin, wmax) in (
            ((1.0, 1.0, 1.0), (h // 3, h - 1, w // 8, w // 3)),
            ((1.0, 0.2, 0.1), (h // 8, h // 4, w // 8, w // 4)),
        ):
            bh = int(torch.randint(hmin, hmax + 1, (1,), generator=gen))
            bw = int(torch.randint(wmin, wmax + 1, (1,), generator=gen))
            y = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
            x = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
            level = torch.randint(190, 256, (1, bh, bw), generator=gen).float()
            out[i, :, y : y + bh, x : x + bw] = level * torch.tensor(colour).view(3, 1, 1)
    return out


def detector_image(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """A detector feed: an RGB picture stretched to the input size, 0..1 (2.2)."""
    return _pictures(shape, gen) / 255.0


def normalised_crop(shape: tuple[int, ...], gen: torch.Generator, ref: Reference) -> torch.Tensor:
    """A pose-model feed: BGR crops 0..1 normalised with the RGB statistics per channel index (3.3)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    bgr = _pictures(shape, gen).flip(1) / 255.0
    return ((bgr.double() - mean) / std).float()


# --------------------------------------------------------------------------------------
# The declaration
# --------------------------------------------------------------------------------------


def _pose_dims(env: Envelope, ref: Reference) -> dict[str, Dim]:
    return {"batch": Dim.of_range("batch", env["batch"])}


DETECTOR = Component(
    name="detector",
    tolerance="person_detector",
    module="detector",
    inputs=specs(TensorSpec("images", "float32", (1, 3, DETECTOR_SIZE, DETECTOR_SIZE), sample=detector_image)),
    outputs=specs(TensorSpec("output0", "float32", (1, DETECTIONS, 6))),
    dims=lambda env, ref: {},
    graph=ImportedGraph(source="detector", positional=True),
)

POSE_MODEL = Component(
    name="pose_model",
    tolerance="pose_estimator",
    module="pose_model",
    inputs=specs(TensorSpec("input", "float32", ("batch", 3, *POSE_INPUT_HW), sample=normalised_crop)),
    outputs=specs(TensorSpec("heatmaps", "float32", ("batch", WHOLEBODY_POINTS, *HEATMAP_HW))),
    dims=_pose_dims,
    graph=ImportedGraph(source="pose_model", batch="batch", positional=True),
)


class WanAnimatePose(Family):
    name = "wan-animate-pose"
    description = (
        "Wan2.2-Animate's preprocessing: YOLOv10 person detector and ViTPose-H whole-body (imported ONNX), "
        "face crops, pose drawing, retargeting, SAM2 replacement masks"
    )
    variants = ("vitpose-h",)
    components = (DETECTOR, POSE_MODEL)
    model_required = False  # --detector FILE --pose-model FILE make a reference on their own
    optional_host_modules = (SAM2_MODULE,)
    source_roles = (
        SourceRole(
            "detector",
            f"The YOLOv10 person detector ({FILES['detector']}); beside --model: instead of its file.",
            "file",
        ),
        SourceRole(
            "pose_model",
            f"The ViTPose whole-body model ({FILES['pose_model']}); beside --model: instead of its file.",
            "file",
        ),
        SourceRole(
            "sam2",
            "Replace mode: a SAM2 video checkpoint in transformers' format (Sam2VideoModel, e.g. "
            "facebook/sam2.1-hiera-large), carried in the export for `zoo pose --mode replace`.",
            "folder",
        ),
    )
    axis_help = {
        "batch": "MIN:OPT:MAX crops per pose-model call (frames); kept at 1 where the given graph does not "
        "compute each crop on its own. `zoo pose` batches OPT frames."
    }

    def axes(self, ref: Reference) -> tuple[Axis, ...]:
        return (Axis("batch", Range(1, 8, 16), ceiling=256, unit="crops"),)

    # ``zoo pose``: the original's preprocess_data.py on the export's runners (step.py)
    pose_options = POSE_OPTIONS

    def pose_step(self, options: Mapping[str, Any], host: HostModules) -> PoseStep:
        return pose_step(options, host)

    def is_pose_output(self, folder: Path) -> bool:
        return is_pose_output(folder)

    def load_sources(self, sources: Sources) -> Reference:
        """The two graphs' files (from ``--model DIR`` by the original's paths, or as given: a given
        one wins) and, for replace mode, a SAM2 folder."""
        wanted = f"{FILES['detector']} and {FILES['pose_model']}"
        files = graph_files(
            sources, FILES, family=self.name, folder_is=f"Wan-Animate's process_checkpoint folder (holding {wanted})"
        )
        refs = [Source(role, path) for role, path in files.items()]
        given = {s.role: Path(s.path) for s in sources}
        loaders: dict[str, Any] = {}
        if "sam2" in given:
            from zoo.families.wan_animate_pose.masks import check_sam2_folder, load_sam2

            sam2 = given["sam2"].resolve()
            check_sam2_folder(sam2)  # a clear error before any export work (no weights read)
            refs.append(Source("sam2", sam2))
            loaders[SAM2_MODULE] = lambda: load_sam2(sam2, "cpu")[0]
        return Reference("vitpose-h", tuple(refs), Modules(loaders))

    def build_random(self, dest: Path, *, variant: str | None = None, preset: str = "tiny", seed: int = 0) -> Path:
        """The original's process_checkpoint layout with stand-ins of both graphs (12)."""
        from zoo.families.wan_animate_pose.standins import detector_graph, save_graph, vitpose_graph

        variant = self.random_choice(variant, preset)
        dest = Path(dest)
        for relative in FILES.values():
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        save_graph(detector_graph(seed), dest / FILES["detector"])
        save_graph(vitpose_graph(seed), dest / FILES["pose_model"])
        write_random_marker(dest, family=self.name, variant=variant, preset=preset, seed=seed)
        return dest

    def write_random_sources(self, dest: Path, *, preset: str = "tiny", seed: int = 0) -> Sources:
        """The process_checkpoint folder and a tiny random SAM2 (transformers' format) beside it."""
        from zoo.families.wan_animate_pose.masks import random_sam2

        model = self.build_random(Path(dest) / "model", preset=preset, seed=seed)
        return (Source("model", model), Source("sam2", random_sam2(Path(dest) / "sam2", seed=seed)))

    def sample_media(self, ref: Reference) -> dict[str, Media]:
        """A reference image (a white figure) and a short driving video of one walking across,
        for ``zoo pose``."""
        from PIL import Image

        from zoo.families.wan_animate_pose.samples import figure_frames

        frames = figure_frames(count=12, height=256, width=320, seed=0)
        reference = figure_frames(count=1, height=400, width=300, seed=1)[0]
        return {
            "reference.png": Image.fromarray(reference),
            "driving.mp4": [Image.fromarray(f) for f in frames],
        }


FAMILY = WanAnimatePose()
