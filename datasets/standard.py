"""Loading MNIST, Fashion-MNIST and CIFAR-10 from their canonical files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cnnc.datasets.dataset import Dataset
from cnnc.datasets.download import download_files, source_url
from cnnc.datasets.files import DataFile, locate, read_data_file
from cnnc.datasets.registry import DATA_ROOT_ENV, StandardDataset
from cnnc.errors import CnncError

if TYPE_CHECKING:
    from concurrent.futures import Future

# How a caller that did not ask for a download can get one; each command says it with its own flags.
DOWNLOAD_HINT = "pass download=True"


def load_standard(
    dataset: StandardDataset,
    split: str,
    data_dir: str | Path | None,
    *,
    download: bool,
    progress: bool,
    mirror: str | None,
    download_hint: str = DOWNLOAD_HINT,
) -> Dataset:
    directory = resolve_directory(dataset, data_dir)
    ahead = _AHEAD.pop((dataset.name, split, directory), None)
    if ahead is not None:
        with contextlib.suppress(Exception):  # anything that failed is loaded again here, to raise here
            return ahead.result()
    return _load(dataset, split, directory, download=download, progress=progress, mirror=mirror,
                 download_hint=download_hint)


def _load(dataset: StandardDataset, split: str, directory: Path, *, download: bool, progress: bool,
          mirror: str | None, download_hint: str = DOWNLOAD_HINT) -> Dataset:
    specs = dataset.files[split]
    missing = [spec for spec in specs if locate(directory, spec) is None]
    if missing and not download:
        raise CnncError(missing_files_message(dataset, split, directory, missing, mirror, download_hint))
    if missing:
        try:
            download_files(dataset, missing, directory, progress=progress, mirror=mirror)
        except CnncError as error:
            raise CnncError(f"{error}\n{_where_to_put(dataset, split, directory, missing)}") from None

    loaded, problems = [], []
    for spec in specs:
        path = locate(directory, spec)
        assert path is not None  # every file is present or was just downloaded
        raw, problem = read_data_file(path, spec, dataset.name)
        loaded.append(raw)
        problems.append(problem)
    images, labels = dataset.decode(loaded, len(dataset.classes))
    # Reported only now: a file that cannot be parsed is better described by why.
    for problem in problems:
        if problem is not None:
            raise CnncError(problem)
    return Dataset(dataset.name, split, images, labels, dataset.classes)


# Splits being loaded on another thread (see loading_ahead), by (dataset, split, directory).
_AHEAD: dict[tuple[str, str, Path], Future[Dataset]] = {}


@contextlib.contextmanager
def loading_ahead(dataset: StandardDataset, splits: Sequence[str], data_dir: str | Path | None) -> Iterator[None]:
    """Load `splits` on a background thread while the caller does other work (reading, decompressing
    and checksumming release the GIL, so it overlaps importing torch, say); load_standard of one of
    them within the block takes the result. Splits with a missing file are left alone (load_standard
    downloads them); what is not taken is dropped when the block ends."""
    directory = resolve_directory(dataset, data_dir)
    present = [split for split in splits if all(locate(directory, spec) for spec in dataset.files[split])]
    if not present:
        yield
        return
    from concurrent.futures import ThreadPoolExecutor

    keys = [(dataset.name, split, directory) for split in present]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnc-load-ahead") as executor:
        for key, split in zip(keys, present):
            _AHEAD[key] = executor.submit(_load, dataset, split, directory, download=False, progress=False,
                                          mirror=None)
        try:
            yield
        finally:
            for key in keys:
                future = _AHEAD.pop(key, None)
                if future is not None:
                    future.cancel()


def resolve_directory(dataset: StandardDataset, data_dir: str | Path | None) -> Path:
    """`data_dir` itself, or its subfolder named after the dataset when it is a data root that has one."""
    if data_dir is None:
        return dataset.default_directory()
    directory = Path(data_dir)
    nested = directory / dataset.folder
    return nested if nested.is_dir() else directory


def missing_files_message(
    dataset: StandardDataset, split: str, directory: Path, missing: Sequence[DataFile], mirror: str | None,
    download_hint: str = DOWNLOAD_HINT,
) -> str:
    source = source_url(dataset, mirror) + (dataset.archive.name if dataset.archive else "")
    return (
        f"{_where_to_put(dataset, split, directory, missing)}\n"
        f"Or {download_hint} to fetch them from {source} (checksummed), "
        f"or set {DATA_ROOT_ENV} to a data root whose {dataset.folder}/ folder holds them."
    )


def _where_to_put(dataset: StandardDataset, split: str, directory: Path, missing: Sequence[DataFile]) -> str:
    names = ", ".join(spec.gz_name if spec.gz_checksum else spec.name for spec in missing)
    absent = "" if directory.is_dir() else " (the directory does not exist)"
    return (
        f"the {dataset.name} {split} split needs files that are missing from {directory.resolve()}{absent}: "
        f"{names} (each may be gzip-compressed, ending in .gz, or not). Put them in that directory."
    )
