"""Whole-content sha256 of files, computed once per version of a file and remembered by its identity.

A file's identity is ``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)``: writing to a file
changes its mtime and ctime, and restoring its mtime afterwards (``touch -r``, ``cp -p``,
``rsync -t --inplace``) still changes its ctime, which no user call can set. The digest of a
large file (at least ``CACHE_ABOVE`` bytes) is kept in memory and in a small JSON file in the
user's cache folder (``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``),
so a 32 GiB checkpoint is read once, not at every load. Never a sample: every byte is read.

Soundness rules:

- A file whose mtime or ctime is within ``SETTLE_NS`` of the moment its hashing began may still
  be written within one filesystem timestamp tick (same identity, other bytes); its digest is
  returned but not remembered.
- A file whose identity changed while it was read is read again (twice at most), then refused.
- The cache file is replaced atomically (temp file + ``os.replace``): a reader sees an old or
  a new version, never a torn one. Two processes storing at once may lose one entry (a later
  re-hash), never store a wrong one. An unreadable cache file or malformed entry is ignored.
- Hard-linking, renaming, ``chmod`` or removing another link of a file change its ctime, so the
  next check reads it again once: the price of trusting no timestamp that a user can restore.
- On Windows ``st_ctime`` is the creation time: there, a same-size write whose mtime is then set
  back to the same nanosecond would not be seen (nothing on Windows writes so by accident).
- Timestamps are compared with this machine's clock: on a network filesystem whose server clock
  runs more than ``SETTLE_NS`` behind, a file written a moment ago could be remembered too soon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
import time
import uuid
from pathlib import Path
from typing import Any

from zoo.errors import ArtifactError

log = logging.getLogger(__name__)

CACHE_ENV = "ZOO_CACHE_DIR"
CACHE_FILE = "file-sha256.json"
CACHE_FORMAT = 1
CACHE_ABOVE = 1 << 20  # smaller files are hashed every time: faster than a look-up
MAX_ENTRIES = 4096
SETTLE_NS = 2_000_000_000  # FAT's 2 s mtime granularity; ext4/xfs/NTFS ticks are far finer
BUFFER = 8 << 20
PROGRESS_ABOVE = 1 << 30
_HEX = re.compile(r"[0-9a-f]{64}")

Identity = tuple[int, int, int, int, int]
_MEMO: dict[Identity, str] = {}
_DISK: dict[Path, tuple[tuple[int, int, int], dict[str, Any]]] = {}  # cache file -> (its stat, entries)


def cache_dir() -> Path:
    """Where zoo keeps caches: ``$ZOO_CACHE_DIR``, else ``$XDG_CACHE_HOME/zoo``, else ``~/.cache/zoo``
    (``RuntimeError`` where there is no home folder and neither variable is set)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "zoo"


def identity(st: os.stat_result) -> Identity:
    """What must stay the same for a remembered digest to still describe the file."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_sha256(path: str | Path, *, progress: bool | None = None) -> str:
    """The sha256 (hex) of every byte of the regular file ``path``, read once per version of the
    file: later calls, in this or another process, find it by the file's identity. A progress bar
    is shown for files over 1 GiB on a terminal (``progress=False``: never). Raises
    :class:`ArtifactError` for what is not a regular file or keeps changing while it is read;
    ``OSError`` (missing, unreadable) as ``open`` does."""
    path = Path(path)
    for _ in range(3):
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"{path} is not a regular file; expected a file of weights or an engine to hash")
        ident = identity(st)
        if st.st_size < CACHE_ABOVE:
            digest = _read_digest(path, st.st_size, progress=False)
            if identity(os.stat(path)) == ident:
                return digest
            continue
        known = _MEMO.get(ident) or _disk_lookup(ident)
        if known:
            return known
        started = time.time_ns()
        digest = _read_digest(path, st.st_size, progress=progress)
        if identity(os.stat(path)) != ident:
            log.warning("%s changed while it was being hashed; reading it again", path)
            continue
        if max(st.st_mtime_ns, st.st_ctime_ns) > started - SETTLE_NS:
            log.debug(
                "%s changed %.1f s ago: its digest is not remembered",
                path,
                (started - max(st.st_mtime_ns, st.st_ctime_ns)) / 1e9,
            )
            return digest
        _MEMO[ident] = digest
        _disk_store(ident, digest, path)
        return digest
    raise ArtifactError(f"{path} kept changing while it was being hashed; run again once nothing is writing to it")


def _read_digest(path: Path, size: int, *, progress: bool | None) -> str:
    """sha256 of the whole file, read into one reused buffer (the hash releases the GIL)."""
    h = hashlib.sha256()
    buf = bytearray(min(BUFFER, max(size, 1)))
    view = memoryview(buf)
    bar = None
    if progress is not False and size >= PROGRESS_ABOVE:
        from tqdm.auto import tqdm

        log.info("hashing %s (%.1f GB), once for this version of the file", path, size / 1e9)
        bar = tqdm(
            total=size,
            desc=f"sha256 {path.name}",
            unit="B",
            unit_scale=True,
            leave=False,
            disable=None if progress is None else False,
        )
    try:
        with open(path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while n := f.readinto(buf):
                h.update(view[:n])
                if bar is not None:
                    bar.update(n)
    finally:
        if bar is not None:
            bar.close()
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# The cache file: {"format": 1, "entries": {"DEV:INO": {size, mtime_ns, ctime_ns, sha256, path}}}
# --------------------------------------------------------------------------------------


def cache_file() -> Path | None:
    """The cache of digests, or None where there is no cache folder (digests then last a process)."""
    try:
        return cache_dir() / CACHE_FILE
    except RuntimeError as e:  # no home folder: Path.home() cannot tell
        log.debug("no hash cache (%s); set %s to keep file digests between runs", e, CACHE_ENV)
        return None


def _read_entries(file: Path) -> dict[str, Any]:
    """The cache's entries, re-read only when the file changed; {} for a missing or unreadable one."""
    try:
        st = os.stat(file)
    except OSError:
        _DISK.pop(file, None)
        return {}
    sig = (st.st_ino, st.st_size, st.st_mtime_ns)
    if file in _DISK and _DISK[file][0] == sig:
        return _DISK[file][1]
    try:
        data = json.loads(file.read_bytes())
        if (
            not isinstance(data, dict)
            or data.get("format") != CACHE_FORMAT
            or not isinstance(data.get("entries"), dict)
        ):
            raise ValueError("not a zoo hash cache of format 1")
        entries = data["entries"]
    except (OSError, ValueError) as e:  # UnicodeDecodeError is a ValueError
        log.warning("ignoring the hash cache %s (%s); it is rewritten at the next large file hashed", file, e)
        entries = {}
    _DISK[file] = (sig, entries)
    return entries


def _disk_lookup(ident: Identity) -> str | None:
    file = cache_file()
    entry = _read_entries(file).get(f"{ident[0]}:{ident[1]}") if file else None
    if not isinstance(entry, dict):
        return None
    digest = entry.get("sha256")
    fields = (entry.get("size"), entry.get("mtime_ns"), entry.get("ctime_ns"))
    if fields != ident[2:] or not isinstance(digest, str) or not _HEX.fullmatch(digest):
        return None  # another version of the file, or a malformed entry
    _MEMO[ident] = digest
    return digest


def _disk_store(ident: Identity, digest: str, path: Path) -> None:
    """Merge one entry into the cache file (the newest last, the oldest dropped past ``MAX_ENTRIES``)."""
    file = cache_file()
    if file is None:
        return
    entries = dict(_read_entries(file))
    key = f"{ident[0]}:{ident[1]}"
    entries.pop(key, None)
    entries[key] = {
        "size": ident[2],
        "mtime_ns": ident[3],
        "ctime_ns": ident[4],
        "sha256": digest,
        "path": str(path.resolve()),
    }
    for old in list(entries)[: max(0, len(entries) - MAX_ENTRIES)]:
        del entries[old]
    tmp = file.parent / f".{file.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"format": CACHE_FORMAT, "entries": entries}, separators=(",", ":")))
        os.replace(tmp, file)
    except OSError as e:  # a read-only home: the digest is still remembered in this process
        log.debug("could not write the hash cache %s (%s)", file, e)
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        return
    _DISK.pop(file, None)
