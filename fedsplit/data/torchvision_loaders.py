"""MNIST, Fashion-MNIST and CIFAR-10 read through torchvision from a local root.

Layout under ``root`` (torchvision's own):

* ``mnist``: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
* ``fashion-mnist``: ``<root>/FashionMNIST/raw/`` with the same four file names
* ``cifar10``: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``

Nothing is downloaded unless ``download=True``. With ``download=False`` a missing file raises
:class:`FileNotFoundError` naming the directory and files expected and how to get them (its
``filename`` is the first missing file). A file that is present but cannot be read (truncated,
empty, another format) or holds the wrong thing (images of another size, a label outside
``0 .. num_classes - 1``, fewer labels than images) raises :class:`DataFileError` naming that file.

Checksums
---------
torchvision's :class:`~torchvision.datasets.CIFAR10` verifies the md5 sum of every batch file
and of ``batches.meta`` before it reads them, so it can read only the official files. With
``download=False`` we read through :class:`PresenceCheckedCIFAR10`, a subclass whose two
integrity hooks (``_check_integrity`` and ``_load_meta``) check that the files are present
instead of checking their md5; parsing is still torchvision's. This lets fedsplit read a
CIFAR-10 tree that was copied, subsetted or re-pickled (and lets the tests use small files in
the real on-disk format). With ``download=True`` the stock class is used, so a download is
md5-verified as usual. MNIST's classes check presence only (torchvision keeps md5 sums for the
compressed archives, not the extracted files), so the stock classes are used for them.
"""

from __future__ import annotations

import errno
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsplit.data.arrays import ArrayDataset, finish_images
from fedsplit.data.bundle import DataBundle
from fedsplit.data.errors import DataError

#: Environment variable naming the default data root (else ``./data``).
DATA_ROOT_ENV = "FEDSPLIT_DATA_ROOT"


@dataclass(frozen=True)
class TorchvisionSource:
    """Where a torchvision dataset lives under ``root``, how to standardise it, how many classes."""

    class_name: str
    folder: str
    files: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

SOURCES: dict[str, TorchvisionSource] = {
    "mnist": TorchvisionSource("MNIST", "MNIST/raw", _MNIST_FILES, (0.1307,), (0.3081,)),
    "fashion-mnist": TorchvisionSource(
        "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES, (0.2860,), (0.3530,)
    ),
    "cifar10": TorchvisionSource(
        "CIFAR10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
}


#: Shape of one raw image of each dataset (``[H, W]`` grey, ``[H, W, C]`` colour).
IMAGE_SHAPES: dict[str, tuple[int, ...]] = {"mnist": (28, 28), "fashion-mnist": (28, 28), "cifar10": (32, 32, 3)}


class DataFileError(DataError):
    """A dataset file is present but unreadable or holds the wrong thing; ``filename`` names it."""

    def __init__(self, message: str, filename: Path) -> None:
        super().__init__(message)
        self.filename = str(filename)


def default_data_root() -> Path:
    """``$FEDSPLIT_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


def missing_files(name: str, root: Path) -> list[str]:
    """Files of dataset ``name`` that are absent under ``root``."""
    source = SOURCES[name]
    folder = root / source.folder
    return [f for f in source.files if not (folder / f).is_file()]


def load_torchvision_bundle(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    resolution: tuple[int, int] | None = None,
    normalize: bool = True,
) -> DataBundle:
    """Read ``name``'s official train split (the clients' pool) and test split (the server's).

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``.
    root : str | pathlib.Path | None
        Data root (``None`` = :func:`default_data_root`).
    download : bool
        Let torchvision fetch missing files into ``root``.
    resolution : tuple[int, int] | None
        Resize to ``(H, W)`` pixels (bilinear), ``None`` = native.
    normalize : bool
        Standardise with the dataset's usual per-channel mean/std.

    Raises
    ------
    FileNotFoundError
        If files are missing and ``download`` is False.
    """
    source = SOURCES[name]
    root_path = Path(root) if root not in (None, "") else default_data_root()
    root_path = root_path.expanduser()
    if not download:
        absent = missing_files(name, root_path)
        if absent:
            folder = (root_path / source.folder).resolve()
            packed = [f"{f}.gz" for f in absent if (folder / f"{f}.gz").is_file()]
            unpack = f"; {', '.join(packed)} found: decompress (gunzip) them in place" if packed else ""
            raise FileNotFoundError(
                errno.ENOENT,
                f"{name}: {len(absent)} file(s) missing from {folder} "
                f"(expected {', '.join(source.files)}; missing {', '.join(absent)}){unpack}; "
                f"pass download=True (config: data.download = true) to fetch them with torchvision, "
                f"or copy them there, or point root (data.root / ${DATA_ROOT_ENV}) at the "
                "directory that holds them",
                str(folder / absent[0]),
            )
    train_pixels, train_labels = _read_split(name, root_path, train=True, download=download)
    test_pixels, test_labels = _read_split(name, root_path, train=False, download=False)
    mean, std = (source.mean, source.std) if normalize else (None, None)
    train_x = finish_images(train_pixels, max_value=255.0, resolution=resolution, mean=mean, std=std)
    test_x = finish_images(test_pixels, max_value=255.0, resolution=resolution, mean=mean, std=std)
    train = ArrayDataset(train_x, train_labels)
    test = ArrayDataset(test_x, test_labels)
    return DataBundle(train, test, source.num_classes, train.input_shape, name)


def _read_split(name: str, root: Path, *, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    """Raw uint8 pixels (``[N, H, W]`` or ``[N, H, W, C]``) and int64 labels of one split.

    Raises
    ------
    DataFileError
        When torchvision cannot parse a file of the split, or what it read is not images of
        :data:`IMAGE_SHAPES` with one label in ``0 .. num_classes - 1`` each; the message names
        the first file at fault (read on its own by :func:`file_problem`).
    """
    import torchvision.datasets as tvd

    if name == "cifar10":
        cls = tvd.CIFAR10 if download else presence_checked_cifar10()
    else:
        cls = getattr(tvd, SOURCES[name].class_name)
    try:
        dataset = cls(str(root), train=train, download=download)
        pixels = np.asarray(dataset.data, dtype=np.uint8)
        labels = np.asarray(dataset.targets, dtype=np.int64)
    except Exception as error:  # torchvision's parsers fail with anything (struct, pickle, view, assert)
        problem = f"{type(error).__name__}: {error}"
    else:
        problem = _arrays_problem(name, pixels, labels)
        if problem is None:
            return pixels, labels
    folder = (root / SOURCES[name].folder).resolve()
    files = split_files(name, train)
    for filename in files:
        if (detail := file_problem(name, folder / filename)) is not None:
            raise DataFileError(
                f"{name}: {folder / filename}: {detail}; replace it with the official file "
                "(or delete it and set data.download = true to fetch it again)",
                folder / filename,
            )
    raise DataFileError(
        f"{name}: the {'train' if train else 'test'} split in {folder} ({', '.join(files)}) "
        f"does not fit together: {problem}; replace them with the official files",
        folder / files[0],
    )


def split_files(name: str, train: bool) -> tuple[str, ...]:
    """The files torchvision reads for one split of ``name`` (CIFAR-10: with ``batches.meta``)."""
    if name == "cifar10":
        return (tuple(f"data_batch_{i}" for i in range(1, 6)) if train else ("test_batch",)) + ("batches.meta",)
    prefix = "train" if train else "t10k"
    return (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")


def _arrays_problem(name: str, pixels: np.ndarray, labels: np.ndarray) -> str | None:
    """What is wrong with a split's arrays (image shape, label count, label range), or None."""
    shape = IMAGE_SHAPES[name]
    if pixels.ndim != len(shape) + 1 or tuple(pixels.shape[1:]) != shape:
        return f"images of shape {list(pixels.shape[1:])}; expected {list(shape)}"
    if labels.shape != (pixels.shape[0],):
        return f"{labels.size} labels for {pixels.shape[0]} images; expected one label per image"
    return _labels_problem(name, labels)


def _labels_problem(name: str, labels: np.ndarray) -> str | None:
    classes = SOURCES[name].num_classes
    bad = labels[(labels < 0) | (labels >= classes)]
    if bad.size:
        return f"label {int(bad[0])} ({bad.size} such); allowed: 0 .. {classes - 1}"
    return None


def file_problem(name: str, path: Path) -> str | None:
    """What is wrong with one file of dataset ``name`` read on its own, or None if it reads well.

    MNIST-like files are parsed with torchvision's own idx readers; CIFAR-10 files are unpickled
    as torchvision does and checked for its keys (``data`` ``[N, 3072]`` uint8 and ``labels``;
    ``batches.meta``: ``label_names``).
    """
    try:
        if name == "cifar10":
            with open(path, "rb") as infile:
                entry = pickle.load(infile, encoding="latin1")
            if path.name == "batches.meta":
                if not isinstance(entry, dict) or "label_names" not in entry:
                    return "not a CIFAR-10 batches.meta (a pickled dict with 'label_names')"
                return None
            if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
                return "not a CIFAR-10 batch (a pickled dict with 'data' and 'labels')"
            data, labels = np.asarray(entry["data"]), np.asarray(entry["labels"], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                return f"'data' has shape {list(data.shape)}; expected [N, 3072] (32x32 RGB rows)"
            if labels.shape != (data.shape[0],):
                return f"{labels.size} labels for {data.shape[0]} images; expected one label per image"
            return _labels_problem(name, labels)
        from torchvision.datasets.mnist import read_image_file, read_label_file

        if "-images-" in path.name:
            images = read_image_file(str(path)).numpy()
            shape = IMAGE_SHAPES[name]
            return None if tuple(images.shape[1:]) == shape else f"images of shape {list(images.shape[1:])}; expected {list(shape)}"
        return _labels_problem(name, read_label_file(str(path)).numpy().astype(np.int64))
    except Exception as error:  # any parse failure is the answer
        return f"cannot be read ({type(error).__name__}: {str(error) or 'malformed'})"


def presence_checked_cifar10() -> type:
    """The :class:`PresenceCheckedCIFAR10` class (built on first use: torchvision is imported lazily)."""
    global _PRESENCE_CHECKED_CIFAR10
    if _PRESENCE_CHECKED_CIFAR10 is None:
        from torchvision.datasets import CIFAR10

        class PresenceCheckedCIFAR10(CIFAR10):
            """torchvision's CIFAR10 that checks the files are present rather than their md5.

            Only for ``download=False`` (see the module docstring): the batch files are parsed by
            torchvision exactly as usual; only the checksum comparison is replaced.
            """

            def _check_integrity(self) -> bool:
                folder = Path(self.root) / self.base_folder
                return all((folder / f).is_file() for f, _ in self.train_list + self.test_list)

            def _load_meta(self) -> None:
                path = Path(self.root) / self.base_folder / self.meta["filename"]
                if not path.is_file():
                    raise RuntimeError(f"CIFAR-10 metadata file not found: {path}")
                with open(path, "rb") as infile:
                    data = pickle.load(infile, encoding="latin1")
                self.classes = data[self.meta["key"]]
                self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        _PRESENCE_CHECKED_CIFAR10 = PresenceCheckedCIFAR10
    return _PRESENCE_CHECKED_CIFAR10


_PRESENCE_CHECKED_CIFAR10: type | None = None
