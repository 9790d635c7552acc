"""What identifying weights by their whole content costs: the first (cold) and the remembered
check of a full-size 14B checkpoint layout (32 GiB of bf16 safetensors in 5 GiB shards).

It writes real files (random bytes, every 64 MiB block distinct: no sparse or repeated data),
fsyncs them and asks the kernel to drop their pages (``posix_fadvise(DONTNEED)``; also tries
``/proc/sys/vm/drop_caches``), checks with ``fincore`` how much is still cached, then times, each
in a fresh child process:

- ``cold``: ``content_hash(folder)`` with an empty hash cache (the torch reference's first check
  of its source; every byte read from disk and hashed),
- ``cached``: the same call again, in a new process (the digests found by file identity in
  ``$ZOO_CACHE_DIR/file-sha256.json``),
- ``warm``: one shard hashed with an empty hash cache while its pages are in memory (the sha256
  rate without the disk), and the in-memory sha256 rate of this CPU.

The files are removed at the end (``--keep`` keeps them).

    python scripts/bench_hashing.py --work /work/zoo-bench-hash [--total-gib 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench_hashing")

SHARD_BYTES = 5 << 30  # the published checkpoints' shard size
TENSOR_BYTES = 128 << 20  # one bf16 [8192, 8192] tensor
BLOCK = 64 << 20


def write_checkpoint(folder: Path, total: int) -> list[Path]:
    """``total`` bytes of bf16 tensors in safetensors shards of at most ``SHARD_BYTES``, written
    from one random block whose first 16 bytes are made distinct per block."""
    folder.mkdir(parents=True, exist_ok=True)
    block = bytearray(os.urandom(BLOCK))
    n_tensors = total // TENSOR_BYTES
    per_shard = SHARD_BYTES // TENSOR_BYTES
    shards = (n_tensors + per_shard - 1) // per_shard
    files, weight_map, done = [], {}, 0
    for s in range(shards):
        count = min(per_shard, n_tensors - done)
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        for t in range(count):
            key = f"blocks.{done + t}.weight"
            header[key] = {
                "dtype": "BF16",
                "shape": [8192, 8192],
                "data_offsets": [t * TENSOR_BYTES, (t + 1) * TENSOR_BYTES],
            }
            weight_map[key] = name
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        path = folder / name
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            for i in range(count * TENSOR_BYTES // BLOCK):
                block[:16] = struct.pack("<QQ", s, i)
                f.write(block)
            f.flush()
            os.fsync(f.fileno())
        files.append(path)
        done += count
        log.info("wrote %s (%.2f GiB)", name, path.stat().st_size / (1 << 30))
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    (folder / "config.json").write_text(json.dumps({"_class_name": "WanTransformer3DModel", "num_layers": 40}))
    return files


def evict(files: list[Path]) -> str:
    """Drop the files' pages from the page cache; says how (and whether drop_caches worked)."""
    how = []
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        how.append("drop_caches")
    except OSError as e:
        how.append(f"drop_caches refused ({e.strerror})")
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    how.append("posix_fadvise(DONTNEED) per file")
    return ", ".join(how)


def resident(files: list[Path]) -> int | None:
    """Bytes of ``files`` in the page cache (``fincore``), None where it cannot be read."""
    try:
        out = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return sum(int(x) for x in out.split())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return None


def child(what: str, path: Path, cache: Path) -> dict[str, Any]:
    """Time ``content_hash`` (or ``file_sha256``) of ``path`` in a new process with hash cache ``cache``."""
    code = (
        "import json, sys, time; sys.path.insert(0, sys.argv[1]); from zoo.infra.checkpoint import content_hash; "
        "from zoo.infra.hashing import file_sha256; from pathlib import Path; f = {'folder': content_hash, "
        "'file': file_sha256}[sys.argv[2]]; t = time.perf_counter(); d = f(Path(sys.argv[3])); "
        "s = time.perf_counter() - t; t = time.perf_counter(); f(Path(sys.argv[3])); "
        "print(json.dumps({'seconds': s, 'again_in_process_seconds': time.perf_counter() - t, 'digest': d}))"
    )
    env = {**os.environ, "ZOO_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(ROOT), what, str(path)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_rate() -> float:
    """sha256 GB/s of this CPU on a buffer in memory (one thread)."""
    data = os.urandom(256 << 20)
    t = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return len(data) / (time.perf_counter() - t) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder on the disk to measure (made, then removed)")
    parser.add_argument("--total-gib", type=float, default=32.0)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint files")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    total = int(args.total_gib * (1 << 30)) // TENSOR_BYTES * TENSOR_BYTES
    existing = next(p for p in (args.work, *args.work.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < total + (8 << 30):
        raise SystemExit(
            f"error: {args.work} has {free / (1 << 30):.1f} GiB free; {total / (1 << 30) + 8:.1f} GiB needed "
            f"(the checkpoint and 8 GiB to spare): use --total-gib or another --work"
        )
    folder = args.work / "transformer"
    caches = Path(tempfile.mkdtemp(prefix="zoo-bench-hash-cache-"))
    results: dict[str, Any] = {
        "total_bytes": total,
        "load_average_before": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }
    try:
        t = time.perf_counter()
        files = write_checkpoint(folder, total)
        results["write_seconds"] = time.perf_counter() - t
        results["shards"] = [f.stat().st_size for f in files]
        results["eviction"] = evict(files)
        results["resident_before_cold"] = resident(files)
        # written more than SETTLE_NS ago, as a checkpoint on disk is (else the digests are not remembered)
        time.sleep(2.5)
        results["cold"] = child("folder", folder, caches / "a")
        results["resident_after_cold"] = resident(files)
        results["cached_new_process"] = child("folder", folder, caches / "a")
        assert results["cached_new_process"]["digest"] == results["cold"]["digest"]
        shard = max(files, key=lambda f: f.stat().st_size)
        t = time.perf_counter()
        with open(shard, "rb") as f:  # pull one shard into the page cache
            while f.read(BLOCK):
                pass
        results["read_shard_seconds"] = time.perf_counter() - t
        results["warm_shard"] = {
            "bytes": shard.stat().st_size,
            "resident": resident([shard]),
            **child("file", shard, caches / "b"),
        }
        results["cpu_sha256_gb_per_s"] = cpu_rate()
        results["load_average_after"] = os.getloadavg()
    finally:
        shutil.rmtree(caches, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)
    gb = total / 1e9
    log.info(
        "checkpoint: %d shards, %.1f GiB (%s GB); written at %.2f GB/s",
        len(results["shards"]),
        total / (1 << 30),
        f"{gb:.1f}",
        gb / results["write_seconds"],
    )
    log.info(
        "page cache before the cold check: %s of %.1f GiB resident (%s)",
        "unknown"
        if results["resident_before_cold"] is None
        else f"{results['resident_before_cold'] / (1 << 30):.2f} GiB",
        total / (1 << 30),
        results["eviction"],
    )
    log.info(
        "cold check (empty hash cache, files read from disk): %.1f s, %.2f GB/s",
        results["cold"]["seconds"],
        gb / results["cold"]["seconds"],
    )
    log.info(
        "cached check, new process: %.4f s; again in the same process: %.5f s",
        results["cached_new_process"]["seconds"],
        results["cold"]["again_in_process_seconds"],
    )
    w = results["warm_shard"]
    log.info(
        "warm page cache, one %.2f GiB shard, empty hash cache: %.1f s, %.2f GB/s (CPU sha256 alone: %.2f GB/s)",
        w["bytes"] / (1 << 30),
        w["seconds"],
        w["bytes"] / 1e9 / w["seconds"],
        results["cpu_sha256_gb_per_s"],
    )
    log.info(
        "load average before/after: %s / %s on %s CPUs",
        results["load_average_before"],
        results["load_average_after"],
        results["cpu_count"],
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
