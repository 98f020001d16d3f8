"""MNIST / Fashion-MNIST / CIFAR-10 loaders, on small files written in the real on-disk format."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsplit.data import load_dataset


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an (uncompressed) idx-ubyte file: magic 0x0000 08 <ndim>, big-endian dims."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_like(root: Path, folder: str, n_train: int, n_test: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(root / folder / "raw" / name, array)
    return arrays


def write_cifar10(root: Path, per_batch: int, seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "batch_label": name,
            "data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),  # rows: R(1024) G(1024) B(1024)
            "labels": rng.integers(0, 10, size=per_batch).tolist(),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)
        batches[name] = entry
    meta = {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f)
    return batches


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_like_files_load_through_torchvision(tmp_path: Path, name: str, folder: str) -> None:
    arrays = write_mnist_like(tmp_path, folder, n_train=30, n_test=12, seed=1)
    bundle = load_dataset(name, root=tmp_path, normalize=False)
    assert bundle.name == name and bundle.num_classes == 10 and bundle.input_shape == (1, 28, 28)
    assert len(bundle.train) == 30 and len(bundle.test) == 12
    assert bundle.train.y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert bundle.test.y.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    expected = torch.from_numpy(arrays["train-images-idx3-ubyte"][7].astype(np.float32) / 255.0)
    assert torch.allclose(bundle.train.x[7, 0], expected)


def test_mnist_normalisation_and_resize(tmp_path: Path) -> None:
    write_mnist_like(tmp_path, "MNIST", n_train=20, n_test=5, seed=2)
    raw = load_dataset("mnist", root=tmp_path, normalize=False)
    normalised = load_dataset("mnist", root=tmp_path, resolution=16)
    assert normalised.input_shape == (1, 16, 16) and normalised.test.x.shape == (5, 1, 16, 16)
    plain = load_dataset("mnist", root=tmp_path)
    assert torch.allclose(plain.train.x, (raw.train.x - 0.1307) / 0.3081, atol=1e-5)


def test_cifar10_small_files_load_through_presence_checked_subclass(tmp_path: Path) -> None:
    batches = write_cifar10(tmp_path, per_batch=4, seed=3)
    bundle = load_dataset("cifar10", root=tmp_path, normalize=False)
    assert bundle.input_shape == (3, 32, 32) and len(bundle.train) == 20 and len(bundle.test) == 4
    expected_labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert bundle.train.y.tolist() == expected_labels
    row = batches["data_batch_2"]["data"][1]  # train sample 5
    for channel in range(3):
        for i, j in [(0, 0), (5, 17), (31, 31)]:
            assert bundle.train.x[5, channel, i, j].item() == pytest.approx(row[channel * 1024 + i * 32 + j] / 255.0)
    assert bundle.test.y.tolist() == batches["test_batch"]["labels"]


def test_stock_torchvision_cifar10_rejects_non_official_files(tmp_path: Path) -> None:
    # the reason for the presence-checked subclass: md5 sums of the official files are enforced
    from torchvision.datasets import CIFAR10

    write_cifar10(tmp_path, per_batch=2, seed=4)
    with pytest.raises(RuntimeError, match="corrupted"):
        CIFAR10(str(tmp_path), train=True, download=False)


@pytest.mark.parametrize(("name", "where"), [
    ("mnist", "MNIST/raw"), ("fashion-mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py"),
])
def test_missing_files_give_a_clear_error_and_never_download(tmp_path: Path, name: str, where: str, monkeypatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def no_network(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(name, root=tmp_path / "empty")
    message = str(info.value)
    assert str(tmp_path / "empty" / where) in message and "download=True" in message


def test_partial_cifar_tree_names_the_missing_file(tmp_path: Path) -> None:
    write_cifar10(tmp_path, per_batch=2, seed=5)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="missing data_batch_3"):
        load_dataset("cifar10", root=tmp_path)


def test_missing_file_error_names_the_first_missing_file_and_gz_copies(tmp_path: Path) -> None:
    # the CLI prints a FileNotFoundError in one line only when it carries a filename
    import gzip

    arrays = write_mnist_like(tmp_path, "MNIST", n_train=6, n_test=3, seed=6)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress((raw / "t10k-labels-idx1-ubyte").read_bytes()))
    (raw / "t10k-labels-idx1-ubyte").unlink()
    assert arrays
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", root=tmp_path)
    assert info.value.filename == str((raw / "t10k-labels-idx1-ubyte").resolve())
    assert "t10k-labels-idx1-ubyte.gz found: decompress" in str(info.value)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _rewrite_batch(path: Path, **changes) -> None:
    with open(path, "rb") as f:
        entry = pickle.load(f)
    entry.update(changes)
    with open(path, "wb") as f:
        pickle.dump(entry, f)


MNIST_BREAKAGES = {
    "truncated images": ("train-images-idx3-ubyte", lambda raw: _truncate(raw / "train-images-idx3-ubyte")),
    "empty labels": ("t10k-labels-idx1-ubyte", lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")),
    "labels file as images": (
        "train-images-idx3-ubyte",
        lambda raw: (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-labels-idx1-ubyte").read_bytes()),
    ),
    "label outside the classes": (
        "train-labels-idx1-ubyte", lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.full(8, 200, np.uint8)),
    ),
    "fewer labels than images": (
        "train-images-idx3-ubyte", lambda raw: write_idx(raw / "train-labels-idx1-ubyte", np.zeros(7, np.uint8)),
    ),
    "images of another size": (
        "t10k-images-idx3-ubyte", lambda raw: write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((3, 32, 32), np.uint8)),
    ),
}


@pytest.mark.parametrize("breakage", sorted(MNIST_BREAKAGES))
def test_broken_mnist_file_is_one_error_naming_it(tmp_path: Path, breakage: str, monkeypatch) -> None:
    import torchvision.datasets.utils as tv_utils

    from fedsplit.data import DataFileError

    monkeypatch.setattr(tv_utils, "download_url", lambda *a, **k: pytest.fail("download attempted"))
    write_mnist_like(tmp_path, "MNIST", n_train=8, n_test=3, seed=7)
    raw = tmp_path / "MNIST" / "raw"
    culprit, breaks = MNIST_BREAKAGES[breakage]
    breaks(raw)
    with pytest.raises(DataFileError) as info:
        load_dataset("mnist", root=tmp_path)
    assert info.value.filename == str((raw / culprit).resolve())
    assert str((raw / culprit).resolve()) in str(info.value) or "does not fit together" in str(info.value)


CIFAR_BREAKAGES = {
    "truncated batch": ("data_batch_4", lambda d: _truncate(d / "data_batch_4")),
    "not a pickle": ("test_batch", lambda d: (d / "test_batch").write_bytes(b"not a pickle")),
    "label outside the classes": ("data_batch_2", lambda d: _rewrite_batch(d / "data_batch_2", labels=[3, 55])),
    "rows of another size": (
        "data_batch_1", lambda d: _rewrite_batch(d / "data_batch_1", data=np.zeros((2, 1000), np.uint8)),
    ),
    "fewer labels than rows": ("data_batch_5", lambda d: _rewrite_batch(d / "data_batch_5", labels=[1])),
    "truncated meta": ("batches.meta", lambda d: _truncate(d / "batches.meta")),
}


@pytest.mark.parametrize("breakage", sorted(CIFAR_BREAKAGES))
def test_broken_cifar10_file_is_one_error_naming_it(tmp_path: Path, breakage: str) -> None:
    from fedsplit.data import DataFileError

    write_cifar10(tmp_path, per_batch=2, seed=8)
    folder = tmp_path / "cifar-10-batches-py"
    culprit, breaks = CIFAR_BREAKAGES[breakage]
    breaks(folder)
    with pytest.raises(DataFileError) as info:
        load_dataset("cifar10", root=tmp_path)
    assert info.value.filename == str((folder / culprit).resolve())
    assert f"{(folder / culprit).resolve()}: " in str(info.value) and "replace it" in str(info.value)
