"""Writing a file so that a reader, or a crash, sees the old file or the new one, never half of one.

Shared by every stage that writes user-facing files (ONNX models, exports, checkpoints).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from cnnc.errors import CnncError


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`, to be written by the caller; when the block ends
    normally it is renamed over `path`, otherwise it is removed and `path` is left as it was.
    Missing parent directories are created; an operating-system failure is a CnncError."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield temporary
        os.replace(temporary, path)
    except OSError as error:
        raise CnncError(f"cannot write {path}: {error.strerror or error}") from None
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
