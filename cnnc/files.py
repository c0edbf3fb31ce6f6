"""Writing the files the user names, so that a reader, or a crash, sees the old file or the new one,
never half of one, and so that what the user named is what gets written.

Shared by every stage that writes user-facing files (ONNX models, exports, checkpoints, IR text):
    a regular file (or a new one)   written to a temporary file beside it, then renamed over it
    a symbolic link                 the same, at the link's final target: the link stays a link
    `-`, or a device or pipe        streamed to it (`-` is standard output); nothing is renamed,
                                    so /dev/stdout stays the device it is
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cnnc.errors import CnncError

STDOUT = "-"
# `.NAME.PID.HEX.tmp`: the temporary files `replacing` writes, recognisable when a killed writer leaves one.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _is_stdout(path: str | os.PathLike) -> bool:
    # /dev/stdout may lead to a regular file (`> file`): replacing that file would lose the output.
    return str(path) in (STDOUT, "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def is_stream(path: str | os.PathLike) -> bool:
    """Whether writing to `path` streams (standard output, a device, a pipe) instead of replacing a file."""
    if _is_stdout(path) or str(path).startswith(("/dev/fd/", "/proc/self/fd/")):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def final_target(path: str | os.PathLike) -> Path:
    """`path` with symbolic links followed (also a dangling link's target): the file a write changes."""
    return Path(os.path.realpath(path))


def check_writable(path: str | os.PathLike, *, binary: bool = False) -> None:
    """Fail now, before any work, when `path` cannot be written: a directory, a missing or read-only
    parent, no permission, or binary output to a terminal. Leaves nothing behind."""
    if _is_stdout(path):
        if binary and sys.stdout.isatty():
            raise CnncError("refusing to write a binary file to the terminal: redirect standard output, or give a file")
        return
    if is_stream(path):
        if not os.access(path, os.W_OK):
            raise CnncError(f"cannot write {path}: permission denied")
        return
    target = final_target(path)
    if target.is_dir():
        raise CnncError(f"cannot write {path}: it is a directory")
    parent = _nearest_existing(target.parent)
    if not parent.is_dir():
        raise CnncError(f"cannot write {path}: {parent} is not a directory")
    _probe(parent, path)


def _nearest_existing(directory: Path) -> Path:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def _probe(directory: Path, named: str | os.PathLike) -> None:
    # os.access ignores read-only bind mounts and, for root, permissions; creating a file does not.
    probe = directory / f".cnnc-write-test.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as error:
        raise CnncError(f"cannot write {named}: {_reason(error)} ({directory})") from None


def _reason(error: OSError) -> str:
    if error.errno == errno.ENOSPC:
        return "no space left on the device"
    if error.errno == errno.EROFS:
        return "the filesystem is read-only"
    return error.strerror or str(error)


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, create_parents: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary path, to be written by the caller; when the block ends normally its
    content goes to `path` (see the module's doc: renamed over a regular file or a link's target,
    streamed to standard output, a device or a pipe), otherwise it is removed and `path` is left as it
    was. An operating-system failure is a CnncError."""
    streaming = is_stream(path)
    target = final_target(path) if not streaming else None
    directory = target.parent if target is not None else None
    name = target.name if target is not None else "stdout"
    temporary: Path | None = None
    try:
        if directory is None:
            # A stream gets the whole file once it is complete: a failed writer sends nothing half-made.
            temporary = Path(tempfile.gettempdir()) / f".cnnc-{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        else:
            if create_parents:
                directory.mkdir(parents=True, exist_ok=True)
            elif not directory.is_dir():
                raise CnncError(f"cannot write {path}: the directory {directory} no longer exists")
            remove_stale_temporaries(directory, name)  # what a writer killed mid-write left of this file
            temporary = directory / f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        yield temporary
        if target is not None:
            _keep_mode(target, temporary)
            os.replace(temporary, target)
        else:
            _stream(temporary, path)
    except OSError as error:
        raise CnncError(f"cannot write {path}: {_reason(error)}") from None
    finally:
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)


def _keep_mode(target: Path, temporary: Path) -> None:
    # Replacing a file keeps what the user set on it (say, group-readable), as editing it in place would.
    with contextlib.suppress(FileNotFoundError):
        os.chmod(temporary, stat.S_IMODE(os.stat(target).st_mode))


def _stream(temporary: Path, path: str | os.PathLike) -> None:
    with open(temporary, "rb") as source:
        if _is_stdout(path):
            sys.stdout.flush()
            shutil.copyfileobj(source, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            # a device, a pipe or another descriptor: neither created nor truncated
            with os.fdopen(os.open(path, os.O_WRONLY), "wb") as sink:
                shutil.copyfileobj(source, sink)


def remove_stale_temporaries(directory: Path, name: str | None = None) -> list[Path]:
    """Delete the temporary files that writers killed mid-write left in `directory` (those whose
    process is gone), only those of the file `name` if given; the paths removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            match = _TEMPORARY.match(entry.name)
            if match is None or (name is not None and match["name"] != name) or not entry.is_file() \
                    or _alive(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
