"""Loading MNIST, Fashion-MNIST and CIFAR-10 from their canonical files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnc.datasets.dataset import Dataset
from cnnc.datasets.download import download_files, source_url
from cnnc.datasets.files import DataFile, locate, read_data_file
from cnnc.datasets.registry import DATA_ROOT_ENV, StandardDataset
from cnnc.errors import CnncError


def load_standard(
    dataset: StandardDataset,
    split: str,
    data_dir: str | Path | None,
    *,
    download: bool,
    progress: bool,
    mirror: str | None,
) -> Dataset:
    directory = resolve_directory(dataset, data_dir)
    specs = dataset.files[split]
    missing = [spec for spec in specs if locate(directory, spec) is None]
    if missing and not download:
        raise CnncError(missing_files_message(dataset, split, directory, missing, mirror))
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


def resolve_directory(dataset: StandardDataset, data_dir: str | Path | None) -> Path:
    """`data_dir` itself, or its subfolder named after the dataset when it is a data root that has one."""
    if data_dir is None:
        return dataset.default_directory()
    directory = Path(data_dir)
    nested = directory / dataset.folder
    return nested if nested.is_dir() else directory


def missing_files_message(
    dataset: StandardDataset, split: str, directory: Path, missing: Sequence[DataFile], mirror: str | None
) -> str:
    source = source_url(dataset, mirror) + (dataset.archive.name if dataset.archive else "")
    return (
        f"{_where_to_put(dataset, split, directory, missing)}\n"
        f"Or pass --download (download=True) to fetch them from {source}, "
        f"or set {DATA_ROOT_ENV} to a data root whose {dataset.folder}/ folder holds them."
    )


def _where_to_put(dataset: StandardDataset, split: str, directory: Path, missing: Sequence[DataFile]) -> str:
    names = ", ".join(spec.gz_name if spec.gz_checksum else spec.name for spec in missing)
    absent = "" if directory.is_dir() else " (the directory does not exist)"
    return (
        f"the {dataset.name} {split} split needs files that are missing from {directory.resolve()}{absent}: "
        f"{names} (each may be gzip-compressed, ending in .gz, or not). Put them in that directory."
    )
