"""Frames per second of `zoo pose` (wan-animate-pose) on this CPU with stand-ins of the real models' size,
against the original's way (plain onnxruntime sessions, one image per model call), where the time goes,
and `zoo bench` of both components.

The stand-ins are :mod:`zoo.families.wan_animate_pose.standins`' ``size="bench"`` graphs (seed 0): a
YOLOv10-M-sized detector (a random conv stack of YOLOv10-M's compute beside the content-following rows)
and a ViTPose-H-sized pose model (a random ViT-H, ~632M parameters, 2.5 GB of external data), with the
real files' IO, written in the original's checkpoint layout (``det/yolov10m.onnx``,
``pose2d/vitpose_h_wholebody.onnx``) under WORK/ckpt (kept between runs unless --clean). The driving
video is :func:`~zoo.families.wan_animate_pose.samples.figure_frames` (a white figure walking, a red
ball) at --size, 30 fps, written with cv2's mp4v; the reference is ``figure_frames(1, 1280, 720, seed=1)``.
Then:

(1) `zoo export wan-animate-pose --model WORK/ckpt --out WORK/export`, timed (the pose model's batch is
    made dynamic when the graph is bit-exact per crop; `zoo pose` then batches the export's opt batch);
(a) `zoo pose WORK/export --image REF --video VIDEO --out WORK/a` (animate mode, --fps 30: T output
    frames = the video's frames), a child process: wall time, frames per second = T / wall seconds,
    peak RSS (GNU time -v when /usr/bin/time is there); before it (a1) the same on a 1-frame video
    (its fixed cost: start-up, checks, sessions, the reference), which gives the rate per further frame;
(b) the original's way (preprocess_data.py, animate mode, no retargeting): one
    onnxruntime.InferenceSession (CPUExecutionProvider, default options) per source graph in WORK/ckpt,
    every image through the zoo's pure functions one at a time (batch 1 per model call, as the
    original's Pose2d does), including the original's extra work: the reference resized by area and
    posed, and frame 0 posed a second time on its own (``tpl_pose_meta0``); then metas, face boxes and
    crops, drawing and letterboxing, and the outputs the zoo writes: the PNG folders ``src_pose/`` and
    ``src_face/`` (the original writes none) and the two mp4 files (the original's, through the same
    FFmpeg command line as moviepy's; FFmpeg encodes in its own process, beside the loop). Each stage
    is timed; (b)'s PNG frames must be byte-identical to (a)'s (a mismatch exits 1);
(c) `zoo bench WORK/export` (both components at the opt shape: torch eager vs onnxruntime).

    python scripts/bench_wan_pose.py --work /tmp/bench-wan-pose [--frames 150] [--size 720x1280] [--threads T]
    python scripts/bench_wan_pose.py --work /tmp/bwp --quick     # 8 frames at 240x320, tiny stand-ins: a smoke test

--threads sets (b)'s intra-op threads; `zoo pose` (a) always runs with onnxruntime's defaults.
--bench-iterations sets (c)'s iterations (a batch-8 ViTPose-H call takes seconds on a small CPU).
--clean deletes the stand-ins and the export (2 x 2.5 GB) at the end.
The steps run one after the other, so on a shared machine the load drifts between them: the load
average is printed before and after each step, with the CPU seconds other processes used during it
(/proc/stat's busy time less this process's and its children's): more than a few seconds means
the step's numbers are not this CPU's alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from zoo.families.wan_animate_pose.draw import draw_pose  # noqa: E402
from zoo.families.wan_animate_pose.face import face_box, face_crop  # noqa: E402
from zoo.families.wan_animate_pose.family import FILES  # noqa: E402
from zoo.families.wan_animate_pose.frames import (  # noqa: E402
    Mp4Writer,
    frame_indices,
    iter_frames,
    probe_video,
    read_reference,
    resize_by_area,
    write_png,
)
from zoo.families.wan_animate_pose.samples import figure_frames  # noqa: E402
from zoo.families.wan_animate_pose.step import REFERENCE, STREAMS, frame_name  # noqa: E402
from zoo.families.wan_animate_pose.vitpose import (  # noqa: E402
    decode_heatmaps,
    detect_person,
    detector_input,
    metas_from_keypoints,
    pose_input,
    to_pixels,
)
from zoo.models.letterbox import padding_resize  # noqa: E402

FPS = 30
AREA = 1280 * 720  # --resolution-area's default (1.4)
STAGES = (
    ("decode", "video decode (cv2, RGB)"),
    ("det_pre", "detector input (stretch to 640, /255)"),
    ("det_run", "detector run (onnxruntime)"),
    ("det_post", "detector decode + NMS + person choice"),
    ("pose_pre", "pose crop + normalise"),
    ("pose_run", "pose model run (onnxruntime, batch 1)"),
    ("heatmaps", "heatmap decode (argmax + DARK)"),
    ("metas", "metas (metas_from_keypoints)"),
    ("face", "face box + 512x512 crop"),
    ("draw", "drawing + letterbox (draw_pose, padding_resize)"),
    ("png", "PNG writes (src_pose/, src_face/)"),
    ("mp4", "mp4 writes (pipe to FFmpeg, and its finish)"),
)
T = TypeVar("T")


class Clock:
    """Seconds spent per stage, summed over calls."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {k: 0.0 for k, _ in STAGES}

    def run(self, stage: str, f: Callable[..., T], *args: Any) -> T:
        t = time.perf_counter()
        try:
            return f(*args)
        finally:
            self.total[stage] += time.perf_counter() - t


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


class Others:
    """CPU seconds that processes other than this one and its children spent during a step: the
    machine's busy time (/proc/stat) less this process's and its waited-for children's CPU time."""

    def __init__(self) -> None:
        self.start = self._busy() - self._own()

    @staticmethod
    def _busy() -> float:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return float("nan")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def seconds(self) -> float:
        return max(self._busy() - self._own() - self.start, 0.0)

    def line(self, what: str) -> str:
        return f"  load average after {what}: {loadavg()}; CPU seconds used by other processes during it: {self.seconds():.1f}"


# --------------------------------------------------------------------------------------
# (1) inputs and the export
# --------------------------------------------------------------------------------------


def build_standins(ckpt: Path, size: str) -> tuple[bool, dict[str, int]]:
    """The stand-ins (seed 0) in the original's layout; kept when WORK/ckpt already holds this size.
    Returns (cached, bytes on disk per role)."""
    from zoo.families.wan_animate_pose.standins import detector_graph, parameter_count, save_graph, vitpose_graph

    marker = ckpt / "standins.json"
    cached = marker.is_file() and json.loads(marker.read_text()).get("size") == size
    if not cached:
        shutil.rmtree(ckpt, ignore_errors=True)
        for relative in FILES.values():
            (ckpt / relative).parent.mkdir(parents=True, exist_ok=True)
        params = {}
        for role, build in (("detector", detector_graph), ("pose_model", vitpose_graph)):
            model = build(0, size)
            params[role] = parameter_count(model)
            save_graph(model, ckpt / FILES[role])
            del model
        marker.write_text(json.dumps({"size": size, "seed": 0, "parameters": params}))
    sizes = {}
    for role, relative in FILES.items():
        path = ckpt / relative
        sizes[role] = sum(p.stat().st_size for p in path.parent.iterdir() if p.name.startswith(path.name))
    return cached, sizes


def write_inputs(work: Path, frames: int, h: int, w: int) -> tuple[Path, Path]:
    """The driving video (figure_frames, cv2 mp4v, 30 fps) and the reference PNG."""
    video = work / f"driving_{frames}x{h}x{w}.mp4"
    ref = work / "reference.png"
    if not video.is_file():
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (w, h))
        for frame in figure_frames(frames, h, w, seed=0):
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
        writer.release()
    if not ref.is_file():
        cv2.imwrite(str(ref), np.ascontiguousarray(figure_frames(1, 1280, 720, seed=1)[0][..., ::-1]))
    return video, ref


def run(cmd: list[str], what: str) -> tuple[float, str, int | None]:
    """Run a child process: (wall seconds, stdout, peak RSS in KiB from GNU time -v or None)."""
    timer = Path("/usr/bin/time")
    timed = timer.is_file() and os.access(timer, os.X_OK)
    full = [str(timer), "-v", *cmd] if timed else cmd
    t = time.perf_counter()
    p = subprocess.run(full, capture_output=True, text=True)
    s = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"error: {what} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    rss = None
    if timed:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
        rss = int(m.group(1)) if m else None
    return s, p.stdout, rss


# --------------------------------------------------------------------------------------
# (b) the original's way
# --------------------------------------------------------------------------------------


def original_way(ckpt: Path, ref: Path, video: Path, out: Path, threads: int | None) -> dict[str, Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    t_start = time.perf_counter()
    det = ort.InferenceSession(str(ckpt / FILES["detector"]), opts, providers=providers)
    pose = ort.InferenceSession(str(ckpt / FILES["pose_model"]), opts, providers=providers)
    load_s = time.perf_counter() - t_start
    det_in, pose_in = det.get_inputs()[0].name, pose.get_inputs()[0].name
    det_out, pose_out = det.get_outputs()[0].name, pose.get_outputs()[0].name  # the original reads output 0
    clock = Clock()
    calls = {"detector": 0, "pose_model": 0}

    def keypoints_of(image: np.ndarray) -> np.ndarray:
        """One image through detector and pose model, batch 1 (vitpose.keypoints_of_images, staged)."""
        hw = (int(image.shape[0]), int(image.shape[1]))
        x = clock.run("det_pre", detector_input, image)
        rows = clock.run("det_run", det.run, [det_out], {det_in: x})[0]
        box = clock.run("det_post", detect_person, rows, hw)
        crop, params = clock.run("pose_pre", pose_input, image, box)
        heatmaps = clock.run("pose_run", pose.run, [pose_out], {pose_in: crop})[0]
        calls["detector"] += 1
        calls["pose_model"] += 1
        return clock.run("heatmaps", decode_heatmaps, heatmaps[0], params)

    t_work = time.perf_counter()
    # the reference: read, resized by area, posed alone (preprocess_data.py animate mode)
    reference = read_reference(ref)
    resized = resize_by_area(reference, AREA)
    ref_kp = keypoints_of(resized)
    clock.run("metas", metas_from_keypoints, [ref_kp], resized.shape[1], resized.shape[0])
    size = resized.shape[:2]  # the pose frames' size (H, W)

    info = probe_video(video)
    indices = frame_indices(info.frames, info.fps, FPS)
    frame_hw = (info.height, info.width)

    def frames() -> Iterator[np.ndarray]:
        it = iter_frames(video, indices)
        while True:
            try:
                yield clock.run("decode", next, it)
            except StopIteration:
                return

    keypoints = []
    for t, frame in enumerate(frames()):
        if t == 0:  # the original poses frame 0 once more on its own (tpl_pose_meta0)
            meta0_kp = keypoints_of(frame)
            clock.run("metas", metas_from_keypoints, [meta0_kp], frame_hw[1], frame_hw[0])
        keypoints.append(keypoints_of(frame))
    metas, _ = clock.run("metas", metas_from_keypoints, keypoints, frame_hw[1], frame_hw[0])

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copyfile(ref, out / REFERENCE)
    for s in ("pose", "face"):
        (out / STREAMS[s]).mkdir()
    writers = {
        "pose": Mp4Writer(out / f"{STREAMS['pose']}.mp4", float(FPS), size[1], size[0]),
        "face": Mp4Writer(out / f"{STREAMS['face']}.mp4", float(FPS), 512, 512),
    }
    box: tuple[int, int, int, int] | None = None
    for t, (frame, meta) in enumerate(zip(frames(), metas)):
        box, _note = clock.run("face", face_box, meta, frame_hw, box)
        face = clock.run("face", face_crop, frame, box)
        canvas = clock.run("draw", draw_pose, clock.run("draw", to_pixels, meta))
        pose_image = clock.run("draw", padding_resize, canvas, size[0], size[1], cv2.INTER_LINEAR)
        for s, image in (("pose", pose_image), ("face", face)):
            clock.run("png", write_png, out / STREAMS[s] / frame_name(t), image)
            clock.run("mp4", writers[s].write, image)
    for writer in writers.values():
        clock.run("mp4", writer.close)
    work_s = time.perf_counter() - t_work
    n = len(metas)
    return {
        "frames": n,
        "session_load_s": load_s,
        "work_s": work_s,
        "total_s": load_s + work_s,
        "calls": calls,
        "stage_s": dict(clock.total),
        "stage_ms_per_frame": {k: 1000 * v / max(n, 1) for k, v in clock.total.items()},
        "intra_op_threads": threads or "ORT default",
    }


def write_one_frame(video: Path, dest: Path) -> Path:
    """The driving video's first frame as a 1-frame video (zoo pose's fixed cost)."""
    if not dest.is_file():
        capture = cv2.VideoCapture(str(video))
        ok, frame = capture.read()
        capture.release()
        if not ok:
            sys.exit(f"error: cannot read the first frame of {video}")
        writer = cv2.VideoWriter(str(dest), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (frame.shape[1], frame.shape[0]))
        writer.write(frame)
        writer.release()
    return dest


def compare(a: Path, b: Path) -> tuple[bool, str]:
    """(a)'s and (b)'s PNG folders, file by file."""
    notes, same = [], True
    for s in ("pose", "face"):
        fa, fb = a / STREAMS[s], b / STREAMS[s]
        na = sorted(p.name for p in fa.iterdir()) if fa.is_dir() else []
        nb = sorted(p.name for p in fb.iterdir()) if fb.is_dir() else []
        if na != nb or not na:
            same = False
            notes.append(f"{STREAMS[s]}/: different files ({len(na)} vs {len(nb)})")
            continue
        diff = [n for n in na if (fa / n).read_bytes() != (fb / n).read_bytes()]
        same = same and not diff
        notes.append(
            f"{STREAMS[s]}/ {len(na) - len(diff)}/{len(na)} byte-identical" + (f" (differ: {diff[:5]})" if diff else "")
        )
    return same, "; ".join(notes)


# --------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "--work", type=Path, required=True, help="folder for the stand-ins (cached), video, export, outputs"
    )
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--size", default="720x1280", help="HxW of the driving video")
    ap.add_argument("--threads", type=int, default=None, help="(b)'s onnxruntime intra-op threads (default: ORT's)")
    ap.add_argument("--quick", action="store_true", help="8 frames at 240x320, tiny stand-ins: a smoke test")
    ap.add_argument("--bench-iterations", type=int, default=10, help="zoo bench --iterations (its warmup: 2)")
    ap.add_argument("--clean", action="store_true", help="delete the stand-ins and the export at the end")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    standin_size = "bench"
    if args.quick:
        args.frames, args.size, standin_size = 8, "240x320", "tiny"
    h, w = (int(v) for v in args.size.lower().split("x"))
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    zoo = str(Path(sys.executable).parent / "zoo")
    report: dict[str, Any] = {"cpus": os.cpu_count(), "frames": args.frames, "size": [h, w], "standins": standin_size}
    print(f"load average at start: {loadavg()} ({os.cpu_count()} CPUs)")

    # (1) stand-ins, inputs, export
    ckpt, export_dir = work / "ckpt", work / "export"
    t = time.perf_counter()
    cached, sizes = build_standins(ckpt, standin_size)
    params = json.loads((ckpt / "standins.json").read_text())["parameters"]
    print(
        f"stand-ins ({standin_size}, seed 0) {'cached' if cached else 'built'} in {time.perf_counter() - t:.1f} s "
        f"under {ckpt}: " + ", ".join(f"{r} {params[r] / 1e6:.1f} M parameters, {sizes[r] / 1e9:.2f} GB" for r in FILES)
    )
    t = time.perf_counter()
    video, ref = write_inputs(work, args.frames, h, w)
    info = probe_video(video)
    frames_out = len(frame_indices(info.frames, info.fps, FPS))
    print(
        f"driving video {video.name}: {info.frames} frames {info.width}x{info.height} at {info.fps:g} fps "
        f"-> {frames_out} output frames at --fps {FPS}; reference {ref.name} 720x1280 ({time.perf_counter() - t:.1f} s)"
    )
    shutil.rmtree(export_dir, ignore_errors=True)
    print(f"  load average before export: {loadavg()}")
    others = Others()
    s_export, out, _ = run(
        [zoo, "export", "wan-animate-pose", "--model", str(ckpt), "--out", str(export_dir)], "zoo export"
    )
    manifest = json.loads((export_dir / "manifest.json").read_text())
    batch = manifest["components"]["pose_model"].get("dims", {}).get("batch")
    report["export_s"] = s_export
    print(f"(1) zoo export: {s_export:.1f} s -> {export_dir} (pose_model batch dims: {json.dumps(batch)})")
    print(others.line("export"))

    # (a) zoo pose
    out_a, out_b = work / "a", work / "b"
    one = write_one_frame(video, work / f"one_{h}x{w}.mp4")
    print(f"  load average before (a1): {loadavg()}")
    others = Others()
    s_one, _, _ = run(
        [zoo, "pose", str(export_dir), "--image", str(ref), "--video", str(one), "--out", str(work / "a1")],
        "zoo pose (1 frame)",
    )
    print(
        f"(a1) zoo pose on a 1-frame video (its first frame): {s_one:.1f} s wall (process start, imports, checks, "
        "sessions, the reference, one frame, the mp4 files)"
    )
    print(others.line("(a1)"))
    print(f"  load average before (a): {loadavg()}")
    others = Others()
    s_a, _, rss_a = run(
        [zoo, "pose", str(export_dir), "--image", str(ref), "--video", str(video), "--out", str(out_a)], "zoo pose"
    )
    if rss_a is None:  # the largest child so far (export included): an upper bound
        rss_a = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rss_how = "getrusage of children (max over all children so far)"
    else:
        rss_how = "GNU time -v"
    fps_a = frames_out / s_a
    report["zoo_pose"] = {"wall_s": s_a, "fps": fps_a, "peak_rss_kib": rss_a, "peak_rss_how": rss_how}
    print(
        f"(a) zoo pose: {s_a:.1f} s wall for {frames_out} frames (process start, sessions, the reference "
        f"included) = {fps_a:.3f} frames/s; peak RSS {rss_a / 2**20:.2f} GiB ({rss_how})"
    )
    marginal = (frames_out - 1) / (s_a - s_one) if s_a > s_one and frames_out > 1 else float("nan")
    report["zoo_pose"].update(one_frame_wall_s=s_one, marginal_fps=marginal)
    print(f"    so {marginal:.3f} frames/s per frame beyond the first ({1000 / marginal:.0f} ms a frame)")
    print(others.line("(a)"))

    # (b) the original's way
    print(f"  load average before (b): {loadavg()}")
    others = Others()
    b = original_way(ckpt, ref, video, out_b, args.threads)
    report["original"] = b
    fps_b = b["frames"] / b["total_s"]
    print(
        f"(b) original's way ({b['intra_op_threads']} intra-op threads, batch 1): {b['total_s']:.1f} s "
        f"(sessions {b['session_load_s']:.1f} s, work {b['work_s']:.1f} s) for {b['frames']} frames = "
        f"{fps_b:.3f} frames/s; model calls: detector {b['calls']['detector']}, pose model "
        f"{b['calls']['pose_model']} (the reference and frame 0's second pass included)"
    )
    print(others.line("(b)"))
    same, detail = compare(out_a, out_b)
    report["identical"], report["identical_detail"] = same, detail
    print(f"identical PNG bytes (a) vs (b): {'yes' if same else 'NO'}: {detail}")

    # where (b)'s time goes
    n = max(b["frames"], 1)
    stage_ms = b["stage_ms_per_frame"]
    total_ms = sum(stage_ms.values())
    print(f"where (b)'s time goes, ms per output frame ({b['frames']} frames; the 2 extra images' work included):")
    for k, name in STAGES:
        print(f"    {name:50s} {stage_ms[k]:10.2f} ms  {100 * stage_ms[k] / total_ms:5.1f}%")
    print(f"    {'sum of stages':50s} {total_ms:10.2f} ms  = {1000 / total_ms:.3f} frames/s")
    other = 1000 * b["work_s"] / n - total_ms
    print(f"    {'outside the stages (probe, loop, copies)':50s} {other:10.2f} ms")
    print(f"    {'session creation (once), per frame':50s} {1000 * b['session_load_s'] / n:10.2f} ms")

    # (c) zoo bench
    print(f"  load average before zoo bench: {loadavg()}")
    others = Others()
    bench_json = work / "bench.json"
    s_bench, bench_out, _ = run(
        [zoo, "bench", str(export_dir), "--iterations", str(args.bench_iterations), "--json", str(bench_json)],
        "zoo bench",
    )
    report["zoo_bench"] = json.loads(bench_json.read_text())["rows"]
    print(f"(c) zoo bench ({s_bench:.1f} s; --iterations {args.bench_iterations}, warmup 2):")
    for line in bench_out.strip().splitlines():
        print(f"    {line}")
    print(others.line("zoo bench"))

    print("summary:")
    print(f"    (a) zoo pose            {fps_a:8.3f} frames/s  ({s_a:.1f} s for {frames_out} frames)")
    print(f"    (b) original's way      {fps_b:8.3f} frames/s  ({b['total_s']:.1f} s for {b['frames']} frames)")
    print(f"    speedup (a) over (b)    {fps_a / fps_b:8.2f}x")
    print(f"    (a) beyond its 1st frame {marginal:7.3f} frames/s  (1-frame run: {s_one:.1f} s)")
    print(f"    (b) work only, no sessions {b['frames'] / b['work_s']:5.3f} frames/s")
    print(f"    export                  {s_export:8.1f} s")
    print(f"    peak RSS of (a)         {rss_a / 2**20:8.2f} GiB")
    print(f"load average at end: {loadavg()}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if args.clean:
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(export_dir, ignore_errors=True)
        print(f"deleted {ckpt} and {export_dir}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
