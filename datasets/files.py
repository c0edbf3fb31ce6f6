"""Finding, reading and verifying the files of the standard datasets.

Every data file may be stored as it is or gzip-compressed (`NAME` or `NAME.gz`). A file is
verified by the checksum of its canonical `.gz` when it is that file, and otherwise by the
checksum of its decompressed content, so a file that was decompressed or recompressed with other
settings still verifies.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cnnc.errors import CnncError

GZIP_SUFFIX = ".gz"
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib's inflate of the gzip format: header, data, CRC-32 and size checked
_REPLACE_ADVICE = ("The file is corrupt or not the canonical one: delete it and fetch it again "
                   "(cnnc train fetches missing files).")


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # a hashlib name
    hexdigest: str

    def of(self, data: bytes) -> str:
        return hashlib.new(self.algorithm, data).hexdigest()


@dataclass(frozen=True)
class DataFile:
    """One file of a standard dataset, under its uncompressed canonical name."""

    name: str
    raw_size: int
    raw_checksum: Checksum | None  # None where no trustworthy value is known; the size is checked then
    gz_checksum: Checksum | None = None  # of the canonical .gz, where the dataset is distributed so

    @property
    def gz_name(self) -> str:
        return self.name + GZIP_SUFFIX


class RawFile(NamedTuple):
    """A data file's decompressed bytes, with the path it came from for messages."""

    path: Path
    data: bytes


def locate(directory: Path, spec: DataFile) -> Path | None:
    """The file holding `spec` in `directory`, uncompressed preferred (it loads faster), or None."""
    for candidate in (directory / spec.name, directory / spec.gz_name):
        if candidate.is_file():
            return candidate
    return None


def read_data_file(path: Path, spec: DataFile, dataset: str) -> tuple[RawFile, str | None]:
    """Read `path`, decompressing it if it is gzipped, and check it against `spec`.

    Returns the content and what is wrong with its checksum (None when it verifies). The caller
    parses the content before reporting a mismatch, so that a truncated or foreign file is
    described by what is wrong with it rather than by a bare checksum mismatch.
    """
    compressed = path.name.endswith(GZIP_SUFFIX)
    # Neither the file nor what it inflates to may outgrow the canonical file (by more than a little,
    # left for the parser to describe): a huge file or a decompression bomb never fills memory.
    limit = spec.raw_size + SLACK
    stored = read_bytes(path, limit=limit, spec=spec)
    raw = RawFile(path, gunzip(path, stored, limit=limit) if compressed else stored)
    return raw, checksum_problem(raw, stored, spec, dataset)


# A gzip file of incompressible data is a little larger than that data (a header, per-block overhead).
SLACK = 1 << 16


def read_bytes(path: Path, limit: int | None = None, spec: DataFile | None = None) -> bytes:
    try:
        size = path.stat().st_size
        if limit is not None and size > limit:
            what = f"the canonical {spec.name} holds {spec.raw_size}" if spec else f"at most {limit} are expected"
            raise CnncError(f"{path} is {size:,} bytes, too large to be that file ({what}). {_REPLACE_ADVICE}")
        return path.read_bytes()
    except OSError as error:
        raise CnncError(f"cannot read {path}: {error.strerror or error}") from None


def gunzip(path: Path, compressed: bytes, limit: int) -> bytes:
    """The decompressed content (of every gzip member, as gzip reads them), read no further than
    `limit` + 1 bytes. One zlib call per member, which releases the GIL for all of it: a thread that
    loads data while another imports torch does not queue for the GIL between chunks, as reading
    through gzip.GzipFile, chunk by chunk, does."""
    parts: list[bytes] = []
    size, rest = 0, compressed
    try:
        while rest and size <= limit:
            inflater = zlib.decompressobj(wbits=GZIP_WBITS)
            parts.append(inflater.decompress(rest, limit + 1 - size))
            size += len(parts[-1])
            if not inflater.eof and size <= limit:
                raise EOFError("compressed file ended before the end-of-stream marker was reached")
            rest = inflater.unused_data.lstrip(b"\0")  # gzip's own reader also skips zeros after a member
    except (EOFError, zlib.error) as error:
        raise CnncError(
            f"{path} is not a complete gzip file ({error}); it is probably truncated or corrupt: "
            "delete it and download it again"
        ) from None
    if size > limit:
        raise CnncError(f"{path} decompresses to more than the {limit:,} bytes of the file it should hold; "
                        f"decompression stopped there. {_REPLACE_ADVICE}")
    return b"".join(parts)


def checksum_problem(raw: RawFile, stored: bytes, spec: DataFile, dataset: str) -> str | None:
    """Why `raw` (stored on disk as `stored`) is not the canonical file `spec`, or None if it is."""
    gz_checksum = spec.gz_checksum if raw.path.name.endswith(GZIP_SUFFIX) else None
    if gz_checksum is not None and gz_checksum.of(stored) == gz_checksum.hexdigest:
        return None
    if spec.raw_checksum is None:
        if len(raw.data) == spec.raw_size:
            return None
        return (
            f"{raw.path} is not the canonical {dataset} file {spec.name}: its content is {len(raw.data)} bytes, "
            f"expected {spec.raw_size}. {_REPLACE_ADVICE}"
        )
    got = spec.raw_checksum.of(raw.data)
    if got == spec.raw_checksum.hexdigest:
        return None
    content = "its decompressed content" if raw.path.name.endswith(GZIP_SUFFIX) else "its content"
    return (
        f"checksum mismatch for {raw.path}: the {spec.raw_checksum.algorithm} of {content} is {got}, "
        f"expected {spec.raw_checksum.hexdigest} (the canonical {dataset} {spec.name}). {_REPLACE_ADVICE}"
    )

