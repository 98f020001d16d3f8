"""MNIST, Fashion-MNIST and CIFAR-10 read through torchvision from a local root.

Layout under ``root`` (torchvision's own):

* ``mnist``: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``
* ``fashion-mnist``: ``<root>/FashionMNIST/raw/`` with the same four file names
* ``cifar10``: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``

Nothing is downloaded unless ``download=True``. With ``download=False`` a missing file raises
:class:`FileNotFoundError` naming the directory and files expected and how to get them.

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

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsplit.data.arrays import ArrayDataset, finish_images
from fedsplit.data.bundle import DataBundle

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
            raise FileNotFoundError(
                f"{name}: {len(absent)} file(s) missing from {(root_path / source.folder).resolve()} "
                f"(expected {', '.join(source.files)}; missing {', '.join(absent)}); "
                f"pass download=True (config: data.download = true) to fetch them with torchvision, "
                f"or copy them there, or point root (data.root / ${DATA_ROOT_ENV}) at the "
                "directory that holds them"
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
    """Raw uint8 pixels (``[N, H, W]`` or ``[N, H, W, C]``) and int64 labels of one split."""
    import torchvision.datasets as tvd

    if name == "cifar10":
        cls = tvd.CIFAR10 if download else presence_checked_cifar10()
    else:
        cls = getattr(tvd, SOURCES[name].class_name)
    dataset = cls(str(root), train=train, download=download)
    pixels = np.asarray(dataset.data, dtype=np.uint8)
    labels = np.asarray(dataset.targets, dtype=np.int64)
    return pixels, labels


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
