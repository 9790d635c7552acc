"""Serving ``zoo run`` (or ``zoo pose``) over the network: the request protocol and the service behind it.

Both ends are independent of the server that carries them (Triton here, see
:mod:`runtimes.triton`): the client packs ``zoo run``'s options, seed and media files into a
:class:`Payload`; the :class:`Service` checks it exactly as ``zoo run`` checks its command line
(the same click types, then the same request checks, all before any backend runs), runs the
sampler with step events, and writes the output with ``zoo run``'s own writer, so the files that
come back are the files ``zoo run`` writes. An export of a family with a pose step and no sampler
runs ``zoo pose``'s step instead (:func:`runs_pose`): its options, its inputs sent as files, the
pose folder back.

On the wire a payload is one JSON document (``request``) and the media files' bytes (``files``,
an object array: plain numpy byte strings drop trailing NUL bytes, which corrupts PNG and MP4).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import click
import numpy as np
from numpy.typing import NDArray

from zoo.errors import EnvelopeError, InputError, ZooError

if TYPE_CHECKING:
    from exporters.manifest import Manifest
    from zoo.contract import Family, Option

PROTOCOL = 1
# Triton tensors of the model (names shared by the repository's config, the model and the client)
REQUEST, MEDIA = "request", "media"  # in
EVENT, FILES, NAMES, ARRAY = "event", "files", "names", "array"  # out


class RequestError(ZooError):
    """A request that ``zoo run`` would refuse: carries the one line ``zoo run`` prints."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


class ServiceError(ZooError):
    """The server cannot run a valid request (a missing engine, a backend absent, a bad output):
    its fault, not the request's. Its line starts ``error: server:`` and names no server path."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line


@dataclass
class Payload:
    """One generation request: ``zoo run``'s options by name (as JSON values), the seed, the
    output's path as the client gave it (the server writes under its file name; its suffix says
    what to write) and the media files the options name (option name -> (the path the client
    gave, the bytes)). Error lines name the client's paths, never the server's."""

    options: dict[str, Any]
    seed: int = 0
    out_name: str = "out.png"
    files: dict[str, tuple[str, bytes | dict[str, bytes]]] = field(default_factory=dict)  # a file, or a folder's files
    return_array: bool = False

    def encode(self) -> dict[str, NDArray[Any]]:
        """The Triton inputs (batch of one)."""
        blobs: list[bytes] = []

        def index(data: bytes) -> int:
            blobs.append(data)
            return len(blobs) - 1

        files: dict[str, dict[str, Any]] = {}
        for option, (name, data) in sorted(self.files.items()):
            if isinstance(data, dict):
                files[option] = {"name": name, "folder": {rel: index(b) for rel, b in sorted(data.items())}}
            else:
                files[option] = {"name": name, "file": index(data)}
        doc = {
            "protocol": PROTOCOL,
            "options": self.options,
            "seed": self.seed,
            "out_name": self.out_name,
            "files": files,
            "return_array": self.return_array,
        }
        media = np.empty((1, max(1, len(blobs))), dtype=object)  # object arrays keep trailing NUL bytes
        media[0, :] = blobs or [b""]
        return {REQUEST: np.array([[json.dumps(doc).encode()]], dtype=object), MEDIA: media}

    @classmethod
    def decode(cls, request: NDArray[Any], media: NDArray[Any] | None) -> Payload:
        """From the Triton inputs; a malformed document is a :class:`RequestError`."""
        try:
            doc = json.loads(bytes(np.asarray(request).reshape(-1)[0]))
            if not isinstance(doc, dict) or doc.get("protocol") != PROTOCOL:
                raise ValueError(f"expected a protocol {PROTOCOL} request document")
            blobs = [] if media is None else [bytes(b) for b in np.asarray(media).reshape(-1)]
            files: dict[str, tuple[str, bytes | dict[str, bytes]]] = {}
            for option, entry in dict(doc.get("files") or {}).items():
                if "folder" in entry:
                    files[str(option)] = (
                        str(entry["name"]),
                        {str(r): blobs[int(i)] for r, i in dict(entry["folder"]).items()},
                    )
                else:
                    files[str(option)] = (str(entry["name"]), blobs[int(entry["file"])])
            options = doc.get("options") or {}
            if not isinstance(options, dict):
                raise ValueError("options must be an object")
            return cls(
                options,
                doc.get("seed", 0),
                str(doc.get("out_name") or "out.png"),
                files,
                bool(doc.get("return_array", False)),
            )
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, UnicodeDecodeError) as e:
            raise RequestError(f"error: not a zoo request ({type(e).__name__}: {e})") from None

    @staticmethod
    def read_media(path: Path, option: str = "--media") -> bytes | dict[str, bytes]:
        """A media option's file, or a folder's regular files by relative path (a video as PNG
        frames); what is neither a regular file nor a folder (a FIFO) is refused before reading."""
        from zoo.infra.media import check_media_path

        check_media_path(path, option)
        if path.is_dir():
            return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
        return path.read_bytes()


def runs_pose(family: Family) -> bool:
    """Whether a request to this family runs its pose step (``zoo pose``), not a sampler (``zoo run``)."""
    return family.has_pose_step and not family.has_sampler


def request_options(family: Family) -> tuple[Option, ...]:
    """The options a request to this family takes: ``zoo pose``'s for a pose step, else ``zoo run``'s."""
    return family.pose_options if runs_pose(family) else family.run_options


def served_family(manifest: Manifest) -> Family:
    """The export's family, if a request can run it (a sampler or a pose step); else the
    :class:`ZooError` of :func:`runtimes.sampler.sampler_family`."""
    from runtimes.sampler import sampler_family
    from zoo.registry import get_family

    family = get_family(manifest.family)
    return family if runs_pose(family) else sampler_family(manifest)


def parse_options(
    run_options: tuple[Option, ...], values: Mapping[str, Any], *, seed: bool = True, command: str = "zoo run"
) -> dict[str, Any]:
    """``values`` (JSON) through the click options ``zoo run`` has for them, seed included, as
    ``zoo run``'s own command line: the same conversions, ranges, required options and messages
    (``Error: ...``). Without ``seed`` (``zoo pose``'s options) a request has no seed."""
    from zoo.infra.options import click_option

    seeds = [click.Option(["--seed", "seed"], default=0, type=click.IntRange(0, 2**63 - 1))] if seed else []
    # zoo run's own options, so that click suggests what it suggests there; a request may not set them
    own = [click.Option([f"--{n}", n]) for n in ("backend", "device", "out")]
    params = [click_option(o) for o in run_options] + [*seeds, *own]
    parser = click.Command(command.split()[-1], params=[*params], add_help_option=False)
    flags = {p.name: p for p in params}
    args: list[str] = []
    try:
        for name, value in values.items():
            param = flags.get(name)
            if param is None or param in own:
                args += ["--" + str(name).replace("_", "-"), str(value)]  # click names it, as on the command line
                continue
            if value is None:
                continue
            flag = param.opts[0]
            if param.is_flag:
                if not isinstance(value, bool):
                    raise click.BadParameter(f"{value!r} is not true or false.", param=param)
                args += [flag] if value else []
                continue
            if param.nargs > 1:  # one option, several values: a JSON list of them
                if (
                    not isinstance(value, list)
                    or len(value) != param.nargs
                    or any(isinstance(v, (dict, list)) for v in value)
                ):
                    raise click.BadParameter(
                        f"{json.dumps(value)[:40]} is not a list of {param.nargs} values.", param=param
                    )
                args += [flag, *map(str, value)]
                continue
            for item in value if param.multiple and isinstance(value, list) else [value]:
                if isinstance(item, (dict, list)):
                    raise click.BadParameter(f"{json.dumps(item)[:40]} is not a single value.", param=param)
                args += [flag, str(item).lower() if isinstance(item, bool) else str(item)]
        ctx = parser.make_context(command, args, resilient_parsing=False)
        given = [p.opts[0] for p in own if ctx.params.get(p.name) is not None]
        if given:
            raise click.UsageError(f"{given[0]} is the server's or the client's choice, not the request's")
        return {k: v for k, v in ctx.params.items() if k not in {p.name for p in own}}
    except click.ClickException as e:
        raise RequestError(f"Error: {e.format_message()}") from None
    except (click.exceptions.Exit, click.exceptions.Abort):  # nothing in a request may end parsing early
        raise RequestError("Error: the request's options could not be parsed") from None


def _writable(name: str) -> bool:
    """Whether this process can put ``name`` into a file path. The Python stub that Triton runs
    the service in has the C locale's ASCII file system encoding (see runtimes.triton.MODEL_PY)."""
    try:
        name.encode(sys.getfilesystemencoding())
        return True
    except UnicodeEncodeError:
        return False


def _server_name(name: str, fallback: str) -> str:
    """``name`` where this process can write it, else ``fallback`` with ``name``'s suffix (which
    says the format). The client's names travel in the request (UTF-8 JSON) and come back in the
    answer; only the server's own paths are limited to what its file system encoding holds."""
    if _writable(name):
        return name
    suffix = PurePosixPath(name).suffix
    return fallback + (suffix if _writable(suffix) else "")


def _frame_names(names: list[str]) -> dict[str, str]:
    """Server names for the files of one folder: as given where all can be written, else numbered
    in the order zoo run reads frames (natural order), hidden files kept hidden, suffixes kept."""
    if all(_writable(n) for n in names):
        return {n: n for n in names}
    from zoo.infra.media import natural_key

    ranked = sorted(names, key=lambda n: natural_key(Path(n)))
    return {
        n: ("." if n.startswith(".") else "") + _server_name(f"{i:06d}{PurePosixPath(n).suffix}", f"{i:06d}")
        for i, n in enumerate(ranked)
    }


def _safe_name(name: str, fallback: str) -> str:
    """A client's file name without its folders (a media file, the output): as given where it is
    a plain name (spaces, accents and leading dots kept, so the file is the one ``zoo run``
    writes), the fallback for an empty name, ``.`` or ``..``."""
    base = PurePosixPath(str(name).replace("\\", "/")).name
    base = "".join(c for c in base if c.isprintable())
    return fallback if base in ("", ".", "..") else base


@dataclass
class Result:
    """What ``zoo run`` would have written: file names relative to the output's folder, with
    their bytes; the float array when asked for."""

    files: list[tuple[str, bytes]]
    array: NDArray[Any] | None = None


class Service:
    """``zoo run`` as a service over one export: built once, then one request at a time. Every
    check happens before any backend runs; errors carry ``zoo run``'s line, with the server's
    temporary paths replaced by the client's names. ``load`` loads every component's backend now
    (a server is not ready with a graph that cannot load), else each when first used."""

    def __init__(
        self, export_dir: str | Path, backend: str = "onnxruntime", device: str = "cpu", *, load: bool = False
    ) -> None:
        from exporters.manifest import load_manifest
        from runtimes.backends import Runners, parse_device
        from runtimes.sampler import Sampler, host_loaders
        from zoo.errors import ArtifactError

        self.manifest = load_manifest(export_dir)
        self.family = served_family(self.manifest)
        self.pose = runs_pose(self.family)
        self.sampler: Sampler | None = None
        if self.pose:  # zoo pose's step: one runner per component, as `zoo pose` builds them
            missing = [c.name for c in self.family.components if c.name not in self.manifest.components]
            if missing:
                raise ArtifactError(
                    f"export {export_dir} lacks component(s) {', '.join(missing)} that the pose step runs; "
                    f"re-export without --component"
                )
            parse_device(device, backend)
            self.runners = Runners(backend, self.manifest, device)
            self.host = host_loaders(self.manifest, device)
        else:
            self.sampler = Sampler(export_dir, backend=backend, device=device)
            self.runners = self.sampler.backends
        self.active: set[Path] = set()  # the request folders in use (removed by whoever ends this process)
        if load:
            try:
                for component in self.runners:
                    self.runners[component].activate()
            except BaseException:
                self.close()
                raise

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        else:
            self.runners.close()

    def _receive(
        self, work: Path, option: str, name: str, data: bytes | dict[str, bytes], names: dict[str, str]
    ) -> Path:
        """A media file or folder written under ``work``; ``names`` maps the server's paths (and
        renamed frame names) back to the client's."""
        path = work / "in" / option / _server_name(_safe_name(name, option), option)
        names[str(path)] = name
        if not isinstance(data, dict):
            path.parent.mkdir(parents=True)
            path.write_bytes(data)
            return path
        flag = f"--{option.replace('_', '-')}"
        targets: dict[tuple[str, ...], tuple[str, bytes]] = {}
        for rel, blob in data.items():  # a folder (of frames)
            parts = tuple(
                _safe_name(p, "_")
                for p in PurePosixPath(str(rel).replace("\\", "/")).parts
                if p not in ("/", ".", "..")
            )
            clash = (
                not parts or parts in targets or any(t[: len(parts)] == parts or parts[: len(t)] == t for t in targets)
            )
            if clash:
                raise RequestError(
                    f"error: {flag} {name}: the folder's file names {rel!r} is empty, repeated or "
                    f"both a file and a folder"
                )
            targets[parts] = (str(rel), blob)
        renamed: dict[tuple[str, ...], str] = {}  # each folder level's names, numbered where needed
        for parent in {t[:-1] for t in targets} | {t[:i] for t in targets for i in range(len(t))}:
            children = sorted({t[len(parent)] for t in targets if len(t) > len(parent) and t[: len(parent)] == parent})
            for child, server in _frame_names(children).items():
                renamed[parent + (child,)] = server
        for parts, (rel, blob) in targets.items():
            target = path.joinpath(*[renamed[parts[: i + 1]] for i in range(len(parts))])
            if target.name != parts[-1]:
                names[str(target)] = f"{name.rstrip('/')}/{rel}"
                names[target.name] = parts[-1]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def run(self, payload: Payload, on_event: Callable[[dict[str, Any]], None] | None = None) -> Result:
        from runtimes.sampler import prepare_request
        from runtimes.writers import check_output_path, write_output

        # named after this process: the server's start and finish remove those of stubs that are gone
        work = Path(tempfile.mkdtemp(prefix=f"zoo-request-{os.getpid()}-"))
        self.active.add(work)
        names: dict[str, str] = {}
        try:
            values = dict(payload.options)
            declared = request_options(self.family)
            media = {o.name for o in declared if o.type == "path"}
            for option, (name, data) in payload.files.items():
                if option not in media:
                    takes = ", ".join("--" + m.replace("_", "-") for m in sorted(media)) or "none"
                    raise RequestError(
                        f"error: a file was sent for --{option.replace('_', '-')}, which takes no file "
                        f"(this model's file options: {takes})"
                    )
                values[option] = str(self._receive(work, option, name, data, names))
            for option in media & set(values) - set(payload.files):
                raise RequestError(
                    f"error: --{option.replace('_', '-')}: send the file's bytes, not a path on the server"
                )
            out_name = _safe_name(payload.out_name, "out")
            out = work / "out" / _server_name(out_name, "out")
            array: NDArray[Any] | None = None
            if self.pose:
                written = self._pose(payload, declared, values, out, names, on_event)
            else:
                options = parse_options(declared, {**values, "seed": payload.seed})
                seed = options.pop("seed")
                request = prepare_request(self.manifest, options)  # media read and shapes checked here
                out.parent.mkdir()
                names[str(out)] = payload.out_name
                check_output_path(request.output_format, out)
                if on_event is not None:
                    on_event({"type": "accepted"})
                assert self.sampler is not None
                array = self.sampler(
                    request,
                    seed,
                    progress=False,
                    on_step=None if on_event is None else lambda e: on_event({"type": "step", **e}),
                )
                written = write_output(array, out, fps=request.fps)
            files = []
            for path in written:
                for p in [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []:
                    if p.is_file():
                        rel = p.relative_to(out.parent).parts
                        files.append(("/".join((out_name if rel[0] == out.name else rel[0], *rel[1:])), p.read_bytes()))
            return Result(files, array.astype(np.float32) if array is not None and payload.return_array else None)
        except (RequestError, ServiceError):
            raise
        except ZooError as e:  # the request's fault (400) or the server's, with no server path in the line
            line = str(e)
            for server_path in sorted((n for n in names if "/" in n), key=len, reverse=True):
                line = line.replace(server_path, names[server_path])
            for server, client in names.items():  # frame names that had to be renamed
                if "/" not in server:
                    line = re.sub(rf"(?<![\w/.-]){re.escape(server)}(?![\w.-])", _literal(client), line)
            line = line.replace(str(work), "")
            for root in {str(self.manifest.root.resolve()), str(self.manifest.root)}:
                line = line.replace(root, "<export>")
            if isinstance(e, (InputError, EnvelopeError)):
                raise RequestError(f"error: {line}") from None
            raise ServiceError(f"error: server: {line}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
            self.active.discard(work)

    def _pose(
        self,
        payload: Payload,
        declared: tuple[Option, ...],
        values: dict[str, Any],
        out: Path,
        names: dict[str, str],
        on_event: Callable[[dict[str, Any]], None] | None,
    ) -> list[Path]:
        """``zoo pose``'s step for a request: its options parsed as ``zoo pose`` parses them, every
        input read and checked before any runner runs, the pose folder written at ``out``; its
        warnings are events (``zoo request`` prints them as ``zoo pose`` does)."""
        if payload.seed != 0:
            raise RequestError("error: --seed: this model runs a pose step, which takes no seed")
        if payload.return_array:
            raise RequestError("error: --array: this model runs a pose step, which returns files, no array")
        options = parse_options(declared, values, seed=False, command="zoo pose")
        step = self.family.pose_step(options, self.host)  # every input read and checked here
        out.mkdir(parents=True)
        names[str(out)] = payload.out_name
        if on_event is not None:
            on_event({"type": "accepted"})
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if on_event is not None:
                on_event({"type": "step", "bar": 0, "step": done, "total": step.frames})

        result = step(self.runners, out, advance)
        if on_event is not None:
            for line in result.warnings:
                on_event({"type": "warning", "line": line})
        return [out]


def _literal(text: str) -> Callable[[re.Match[str]], str]:
    """A ``re.sub`` replacement that is ``text`` as is (no backslash or group escapes)."""
    return lambda match: text


def safe_relative(name: str) -> PurePosixPath:
    """A file name the server sent back, checked to stay inside the output's folder (client side)."""
    p = PurePosixPath(name)
    if not name or p.is_absolute() or ".." in p.parts or "\\" in name:
        raise InputError(
            f"the server sent a file named {name!r}, which is not a path inside the output folder; refused"
        )
    return p
