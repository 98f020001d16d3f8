"""Dataset loaders: ArrayDataset, digits, synthetic, resize/normalise, and name errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsplit.data import DATASETS, ArrayDataset, DataBundle, SyntheticSpec, SyntheticTask, load_dataset


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", seed=0)


def test_array_dataset_holds_float_images_and_int_labels() -> None:
    ds = ArrayDataset(np.zeros((3, 1, 2, 2), dtype=np.uint8), [0, 1, 2])
    assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert len(ds) == 3 and ds.input_shape == (1, 2, 2)
    x, y = ds[2]
    assert x.shape == (1, 2, 2) and int(y) == 2
    batch_x, batch_y = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch_x.shape == (3, 1, 2, 2) and batch_y.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="expected"):
        ArrayDataset(np.zeros((3, 2, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match="expected"):
        ArrayDataset(np.zeros((3, 1, 2, 2)), [0, 1])


def test_dataset_names() -> None:
    assert DATASETS == ("digits", "synthetic", "mnist", "fashion-mnist", "cifar10")


def test_digits_is_offline_and_has_a_stratified_20_percent_server_split(digits: DataBundle) -> None:
    assert digits.name == "digits" and digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert len(digits.train) == 1437 and len(digits.test) == 360
    test_counts = np.bincount(digits.test.y.numpy(), minlength=10)
    all_counts = test_counts + np.bincount(digits.train.y.numpy(), minlength=10)
    assert all_counts.sum() == 1797
    assert np.all(np.abs(test_counts - 0.2 * all_counts) <= 1.0)  # stratified
    # normalised with whole-dataset statistics: pooled mean ~ 0, std ~ 1
    pooled = torch.cat([digits.train.x, digits.test.x])
    assert abs(float(pooled.mean())) < 1e-3 and abs(float(pooled.std()) - 1.0) < 1e-2


def test_digits_split_is_seeded(digits: DataBundle) -> None:
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(again.test.x, digits.test.x) and torch.equal(again.test.y, digits.test.y)
    assert not torch.equal(other.test.x, digits.test.x)


def test_digits_resolution_and_raw_pixels() -> None:
    raw = load_dataset("digits", normalize=False)
    assert float(raw.train.x.min()) == 0.0 and float(raw.train.x.max()) == 1.0
    big = load_dataset("digits", resolution=28, normalize=False)
    assert big.input_shape == (1, 28, 28) and big.train.x.shape == (1437, 1, 28, 28)
    # bilinear upsampling keeps each image's range and (approximately) its mean brightness
    assert float(big.train.x.min()) >= 0.0 and float(big.train.x.max()) <= 1.0 + 1e-6
    mean_small = raw.train.x.mean(dim=(1, 2, 3))
    mean_big = big.train.x.mean(dim=(1, 2, 3))
    assert torch.allclose(mean_small, mean_big, atol=0.03)
    wide = load_dataset("digits", resolution=(16, 12))
    assert wide.input_shape == (1, 16, 12)


def test_synthetic_bundle_any_shape_and_seeded() -> None:
    bundle = load_dataset("synthetic", resolution=(12, 10), channels=3, num_classes=4, num_train=100, num_test=40, seed=3)
    assert bundle.input_shape == (3, 12, 10) and bundle.num_classes == 4
    assert len(bundle.train) == 100 and len(bundle.test) == 40
    assert set(bundle.train.y.tolist()) == {0, 1, 2, 3}
    again = load_dataset("synthetic", resolution=(12, 10), channels=3, num_classes=4, num_train=100, num_test=40, seed=3)
    other = load_dataset("synthetic", resolution=(12, 10), channels=3, num_classes=4, num_train=100, num_test=40, seed=4)
    assert torch.equal(again.train.x, bundle.train.x)
    assert not torch.equal(other.train.x, bundle.train.x)
    assert not torch.equal(bundle.train.x[:40], bundle.test.x)  # test set is a separate draw


def _softmax_regression_accuracy(train: ArrayDataset, test: ArrayDataset, num_classes: int, steps: int = 150) -> float:
    torch.manual_seed(0)
    model = torch.nn.Linear(train.x[0].numel(), num_classes)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    x, y = train.x.flatten(1), train.y
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a thread pool only adds contention on a shared 2-core box
    try:
        for _ in range(steps):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
        with torch.no_grad():
            return float((model(test.x.flatten(1)).argmax(1) == test.y).float().mean())
    finally:
        torch.set_num_threads(threads)


def test_synthetic_is_learnable_well_above_chance() -> None:
    bundle = load_dataset("synthetic", num_train=1500, num_test=500)  # 10 classes, 28x28
    accuracy = _softmax_regression_accuracy(bundle.train, bundle.test, bundle.num_classes)
    assert accuracy > 0.7  # chance is 0.1


def test_synthetic_task_is_not_trivially_separable_when_noisy() -> None:
    # larger latent noise makes it harder: the knob does something
    easy = load_dataset("synthetic", resolution=8, num_train=800, num_test=400, noise=0.5)
    hard = load_dataset("synthetic", resolution=8, num_train=800, num_test=400, noise=3.0)
    assert _softmax_regression_accuracy(easy.train, easy.test, 10) > _softmax_regression_accuracy(hard.train, hard.test, 10) + 0.2


def test_synthetic_task_shares_class_means_between_pool_and_test() -> None:
    task = SyntheticTask(SyntheticSpec(num_train=10, num_test=10, seed=5))
    assert task.class_means.shape == (10, 1, 4, 4)
    assert np.array_equal(task.class_means, SyntheticTask(SyntheticSpec(seed=5)).class_means)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"name": "imagenet"}, "dataset='imagenet'"),
        ({"name": "digits", "resolution": -1}, "resolution=-1"),
        ({"name": "synthetic", "num_classes": 1}, "num_classes=1"),
        ({"name": "synthetic", "samples_per_client": 0, "num_train": -5}, "num_train=-5"),
    ],
)
def test_bad_loader_arguments_are_one_line_value_errors(kwargs: dict, parameter: str) -> None:
    name = kwargs.pop("name")
    with pytest.raises(ValueError) as info:
        load_dataset(name, **kwargs)
    message = str(info.value)
    assert parameter in message and "allowed" in message and "\n" not in message


def test_unknown_loader_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="colour"):
        load_dataset("digits", colour=True)


def test_dataset_names_are_forgiving_about_case_and_separator() -> None:
    assert load_dataset("Digits").name == "digits"
