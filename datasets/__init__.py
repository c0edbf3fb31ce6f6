"""Datasets for training and evaluation, as uint8 (N, C, H, W) images and int64 labels.

Built on NumPy alone (Pillow only for image folders), so the torch-free runtime can use it.

    from cnnc.datasets import load_dataset
    train = load_dataset("mnist", "train")

Datasets (`DATASETS` describes each):
    mnist, fashion_mnist, cifar10   the standard datasets, read from their canonical files
    xo                              X-versus-O glyphs generated on the fly; needs no files
    folder                          your images, one subfolder per class (see cnnc.datasets.folder)
    npz                             your arrays in a .npz file (see cnnc.datasets.npz)

Where the standard datasets are read from:
    - `data_dir` when given: the dataset's own directory, or a data root holding the dataset's
      folder (mnist/, fashion-mnist/, cifar-10/);
    - otherwise DATA_ROOT/<folder>, where DATA_ROOT is $CNNC_DATA if set, else the per-user cache
      $XDG_CACHE_HOME/cnnc or ~/.cache/cnnc (it is read at each call; DEFAULT_DATA_ROOT is its
      value when this module was imported).
Files may be stored gzip-compressed (NAME.gz) or not; they are verified against the checksums of
the canonical files (cnnc.datasets.registry). MNIST and Fashion-MNIST are the four IDX files
(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte); CIFAR-10 is the binary version's data_batch_1.bin ... data_batch_5.bin
and test_batch.bin.

With download=True, missing files are fetched from the canonical source, or from the mirror
given by `mirror` or $CNNC_DATASET_MIRROR (laid out as MIRROR/<folder>/<file as published>),
verified against their checksums. `cnnc train` downloads on first use (unless --no-download). A
download keeps a .gz decompressed where the checksum of its content is known (MNIST's four files,
Fashion-MNIST's labels).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from cnnc.datasets.dataset import Dataset, split_validation
from cnnc.datasets.folder import load_folder
from cnnc.datasets.npz import load_npz
from cnnc.datasets.registry import DATASETS, SPLITS, STANDARD_DATASETS, DatasetInfo, default_data_root
from cnnc.datasets.standard import load_standard
from cnnc.datasets.xo import generate_xo
from cnnc.errors import CnncError

__all__ = ["DATASETS", "DEFAULT_DATA_ROOT", "Dataset", "DatasetInfo", "load_dataset", "split_validation"]

DEFAULT_DATA_ROOT: Path = default_data_root()


def load_dataset(
    name: str,
    split: str,
    data_dir: str | Path | None = None,
    *,
    path: str | Path | None = None,
    download: bool = False,
    progress: bool = True,
    seed: int = 0,
    mirror: str | None = None,
    download_hint: str | None = None,
) -> Dataset:
    """Load the `split` ("train" or "test") of the dataset `name`.

    `path` (or `data_dir`) names the folder or file of the `folder` and `npz` datasets. `download`
    fetches missing standard files (with a progress bar if `progress`), from `mirror` if given.
    `download_hint` says, in a missing-files message, how the caller's user asks for a download.
    `seed` picks the glyphs of `xo`. Raises CnncError, with a message for the user, when the
    data is missing or malformed.
    """
    if split not in SPLITS:
        raise CnncError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if name in STANDARD_DATASETS:
        return load_standard(
            STANDARD_DATASETS[name], split, data_dir, download=download, progress=progress, mirror=mirror,
            **({"download_hint": download_hint} if download_hint else {}),
        )
    if name == "xo":
        return generate_xo(split, seed)
    if name == "folder":
        return load_folder(_user_path(name, path, data_dir), split)
    if name == "npz":
        return load_npz(_user_path(name, path, data_dir), split)
    raise CnncError(_unknown_dataset_message(name))


def _user_path(name: str, path: str | Path | None, data_dir: str | Path | None) -> Path:
    given = path if path is not None else data_dir
    if given is None:
        what = "folder of class subfolders" if name == "folder" else ".npz file"
        raise CnncError(f"the {name} dataset needs the path of your {what}")
    return Path(given)


def _unknown_dataset_message(name: str) -> str:
    message = f"unknown dataset {name!r}; the datasets are {', '.join(DATASETS)}"
    suggestions = difflib.get_close_matches(name.lower(), DATASETS, n=1)
    return f"{message} (did you mean {suggestions[0]}?)" if suggestions else message
