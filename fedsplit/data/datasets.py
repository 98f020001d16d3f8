"""Dataset loaders by name: the offline ``digits`` and ``synthetic`` sets and the dispatcher.

:func:`load_dataset` is the one entry point. ``digits`` (scikit-learn's bundled 8x8 handwritten
digits) is the offline default; ``synthetic`` is generated; ``mnist``, ``fashion-mnist`` and
``cifar10`` are read through torchvision from a local root (:mod:`.torchvision_loaders`).
Nothing is downloaded unless ``download=True`` is passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from fedsplit.data.arrays import ArrayDataset, finish_images, parse_resolution
from fedsplit.data.bundle import DataBundle
from fedsplit.data.synthetic import SyntheticSpec, SyntheticTask
from fedsplit.data.torchvision_loaders import SOURCES, load_torchvision_bundle

#: Dataset names accepted by :func:`load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10")

#: Fraction of the 1797 digits kept for the server's test set (stratified, seeded).
DIGITS_TEST_FRACTION = 0.2

#: Classes of scikit-learn's digits (0-9).
DIGITS_CLASSES = 10


def canonical_dataset_name(name: str) -> str:
    """``name`` in the spelling of :data:`DATASETS` (case and ``_``/``-`` insensitive).

    Raises
    ------
    ValueError
        If the name is not one of :data:`DATASETS`.
    """
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}
    key = aliases.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"dataset={name!r} is not known; allowed: {', '.join(DATASETS)}")
    return key


def dataset_num_classes(name: str) -> int:
    """Number of classes of dataset ``name``, known without loading it.

    ``synthetic`` counts the default :class:`SyntheticSpec` (the one a run configuration gets).

    Raises
    ------
    ValueError
        If the name is not one of :data:`DATASETS`.
    """
    key = canonical_dataset_name(name)
    if key == "digits":
        return DIGITS_CLASSES
    if key == "synthetic":
        return SyntheticSpec().num_classes
    return SOURCES[key].num_classes


def load_digits_bundle(
    *, seed: int = 0, resolution: tuple[int, int] | None = None, normalize: bool = True,
    test_fraction: float = DIGITS_TEST_FRACTION,
) -> DataBundle:
    """scikit-learn's handwritten digits (1797 grey 8x8 images, 10 classes, bundled).

    The server's test set is a stratified ``test_fraction`` (default 20 %, i.e. 360 images)
    split drawn with ``seed``; the other 1437 images are the pool the clients share.
    Pixels (0..16) are scaled to [0, 1]; with ``normalize`` they are standardised with the mean
    and standard deviation of all 1797 images (about 0.305 and 0.376), which do not depend on
    the seed.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} is not valid; allowed: 0 < value < 1")
    digits = load_digits()
    pixels = digits.images.astype(np.float32)  # [1797, 8, 8], values 0..16
    labels = digits.target.astype(np.int64)
    scaled = pixels / 16.0
    mean, std = ([float(scaled.mean())], [float(scaled.std())]) if normalize else (None, None)
    train_idx, test_idx = train_test_split(
        np.arange(labels.shape[0]), test_size=test_fraction, stratify=labels, random_state=seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    x = finish_images(pixels, max_value=16.0, resolution=resolution, mean=mean, std=std)
    train = ArrayDataset(x[train_idx], labels[train_idx])
    test = ArrayDataset(x[test_idx], labels[test_idx])
    return DataBundle(train, test, DIGITS_CLASSES, train.input_shape, "digits")


def synthetic_spec(
    *, seed: int = 0, resolution: tuple[int, int] | None = None, **options: Any
) -> SyntheticSpec:
    """A :class:`SyntheticSpec` from loader-style arguments (``resolution`` sets height/width).

    Raises
    ------
    TypeError
        For an option that is not a :class:`SyntheticSpec` field.
    """
    allowed = {f.name for f in fields(SyntheticSpec)} - {"seed", "height", "width"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"synthetic got unknown option(s) {unknown}; allowed: {', '.join(sorted(allowed))}"
        )
    if resolution is not None:
        options["height"], options["width"] = resolution
    return SyntheticSpec(seed=seed, **options)


def load_synthetic_bundle(
    *, seed: int = 0, resolution: tuple[int, int] | None = None, normalize: bool = True,
    **options: Any,
) -> DataBundle:
    """A synthetic task (see :mod:`fedsplit.data.synthetic`) as a bundle.

    ``options`` are :class:`SyntheticSpec` fields (``num_classes``, ``channels``,
    ``num_train``, ``num_test``, ``noise``, ``samples_per_client``, ...); ``resolution`` sets
    the generated image size (default 28 x 28). Without ``samples_per_client`` (or with 0) the
    bundle holds a pooled training set of ``num_train`` samples. With ``samples_per_client=n``
    the bundle's ``train`` is empty and ``bundle.synthetic`` carries the spec:
    :class:`fedsplit.data.FederatedData` then generates each client's ``n`` samples on demand,
    so nothing O(population) is built. ``normalize`` has no effect: generated pixels are
    already centred with a scale of order one.
    """
    del normalize
    if not options.get("samples_per_client"):
        options.pop("samples_per_client", None)
    spec = synthetic_spec(seed=seed, resolution=resolution, **options)
    task = SyntheticTask(spec)
    if spec.samples_per_client is not None:
        train = ArrayDataset(np.zeros((0, *spec.input_shape), dtype=np.float32), np.zeros(0, dtype=np.int64))
    else:
        train = task.train_pool()
    return DataBundle(train, task.test_set(), spec.num_classes, spec.input_shape, "synthetic", synthetic=spec)


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    download: bool = False,
    seed: int = 0,
    resolution: int | Sequence[int] | None = None,
    normalize: bool = True,
    **options: Any,
) -> DataBundle:
    """Load a dataset by name as a :class:`DataBundle` (clients' pool + server test set).

    Parameters
    ----------
    name : str
        One of :data:`DATASETS`.
    root : str | pathlib.Path | None
        Directory holding torchvision datasets (``mnist``, ``fashion-mnist``, ``cifar10``);
        ``None`` = ``$FEDSPLIT_DATA_ROOT`` or ``./data``. Unused by ``digits``/``synthetic``.
    download : bool
        Let torchvision download a missing dataset into ``root``. Off by default: nothing is
        downloaded at run time unless asked for.
    seed : int
        Seed of the digits test split and of the synthetic task.
    resolution : int | tuple[int, int] | None
        Resize images to ``R x R`` (or ``H x W``) pixels with bilinear interpolation;
        ``None`` or ``0`` = native size (synthetic: 28 x 28).
    normalize : bool
        Standardise pixels with the dataset's per-channel mean/std (not for ``synthetic``).
    **options
        Dataset-specific: ``test_fraction`` for digits; :class:`SyntheticSpec` fields for
        synthetic (``samples_per_client=n`` selects per-client generation, see
        :func:`load_synthetic_bundle`).

    Raises
    ------
    ValueError
        For an unknown name or resolution.
    FileNotFoundError
        When a torchvision dataset is missing under ``root`` and ``download`` is False; the
        message says where the files were expected and how to get them.
    fedsplit.data.torchvision_loaders.DataFileError
        (a ValueError) When a torchvision dataset's file is present but unreadable, or holds
        images of the wrong size, too few labels or a label outside the classes; it names the file.
    """
    key = canonical_dataset_name(name)
    size = parse_resolution(resolution)
    loaders: dict[str, Callable[..., DataBundle]] = {
        "digits": load_digits_bundle,
        "synthetic": load_synthetic_bundle,
    }
    if key in loaders:
        if key == "digits":
            _reject_options("digits", options, {"test_fraction"})
        return loaders[key](seed=seed, resolution=size, normalize=normalize, **options)
    _reject_options(key, options, set())
    return load_torchvision_bundle(key, root=root, download=download, resolution=size, normalize=normalize)


def _reject_options(dataset: str, options: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"dataset {dataset!r} got unknown option(s) {unknown}; "
            f"allowed: {', '.join(sorted(allowed)) or 'none'}"
        )
