"""Atomic artifact writes: a killed process leaves no partial file or folder at the final path."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EXPORT_MARKER = ".zoo-export"  # in every export folder: it may be replaced by a re-export


def _temp_sibling(path: Path, tag: str) -> Path:
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path, remedy: str = "") -> Any:
    """A JSON file that anyone may have edited; :class:`ArtifactError` naming it (and ``remedy``)
    if it cannot be read or parsed."""
    from zoo.errors import ArtifactError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"{path} is not readable JSON ({e}){remedy}") from None


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Build a folder beside ``final`` and swap it in only when the block succeeds.

    Two processes exporting to the same path each build their own staging folder; the last to
    finish wins whole. On error (or Ctrl-C) the staging folder is removed and ``final`` is
    untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(final)
    stage = _temp_sibling(final, "staging")
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    # swap: move whatever is at ``final`` aside, then rename; retried, since another process
    # may be swapping its own folder in at the same moment (the last one wins, whole)
    aside = []
    for _ in range(20):
        try:
            os.replace(stage, final)
            break
        except OSError:  # final exists and is not empty
            old = _temp_sibling(final, "old")
            try:
                os.replace(final, old)
                aside.append(old)
            except FileNotFoundError:
                pass
    else:
        shutil.rmtree(stage, ignore_errors=True)
        raise OSError(f"could not move the new folder into place at {final}")
    for old in aside:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def pid_running(pid: int) -> bool:
    """Whether process ``pid`` runs. A zombie (killed or exited, not yet reaped) does not: it
    writes nothing more, so what it left may be removed. Another user's process does."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():  # /proc is there: no such process
            return False
    except OSError:
        pass
    else:
        try:
            return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # the state, after the command's name
        except IndexError:
            pass
    try:  # no /proc (macOS): ask the kernel, for which a zombie still exists
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


def remove_dead_scratch(prefix: str) -> list[Path]:
    """Remove the folders ``PREFIX<pid>-*`` in the system's temporary folder whose process is gone
    (a kill -9 leaves them). Only real folders: a symlink or a file with such a name is left alone.
    Returns what was removed."""
    import tempfile

    removed = []
    for old in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = old.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not pid_running(int(pid)) and old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
    return removed


def scratch_dir(prefix: str) -> Path:
    """A new temporary folder ``PREFIX<pid>-XXXX`` in the system's temporary folder, named after
    this process; first, those of processes that are gone are removed (:func:`remove_dead_scratch`)."""
    import tempfile

    remove_dead_scratch(prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def clean_stale(final: str | Path) -> list[Path]:
    """Remove staging / set-aside folders and temp files beside ``final`` that a killed process
    left (their pid, in the name, is no longer running). Returns what was removed."""
    final = Path(final)
    removed: list[Path] = []
    if not final.parent.is_dir():
        return removed
    prefix = f".{final.name}."
    for p in final.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        tag, _, rest = p.name[len(prefix) :].partition("-")
        pid = rest.split("-", 1)[0]
        if tag in ("staging", "old", "tmp") and pid.isdigit() and not pid_running(int(pid)):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
