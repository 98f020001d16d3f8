"""Partitioning a finite pool: defining property of each scheme, determinism, disjointness, coverage."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fedsplit.data import PARTITIONERS, DataBundle, FederatedData, load_dataset, make_federated_data


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    return load_dataset("digits", seed=0)


def pool_labels(bundle: DataBundle) -> np.ndarray:
    return bundle.train.y.numpy()


def all_indices(fed: FederatedData) -> list[np.ndarray]:
    return [fed.partition_indices(p) for p in range(fed.num_partitions)]


def label_distributions(fed: FederatedData, labels: np.ndarray) -> np.ndarray:
    counts = np.stack([np.bincount(labels[idx], minlength=fed.num_classes) for idx in all_indices(fed)])
    return counts / counts.sum(axis=1, keepdims=True)


def mean_total_variation(fed: FederatedData, labels: np.ndarray) -> float:
    """Mean over partitions of the total-variation distance between its label mix and the pool's."""
    global_mix = np.bincount(labels, minlength=fed.num_classes) / labels.shape[0]
    return float(0.5 * np.abs(label_distributions(fed, labels) - global_mix).sum(axis=1).mean())


def assert_disjoint_and_covering(fed: FederatedData, pool_size: int) -> None:
    chunks = all_indices(fed)
    joined = np.concatenate(chunks)
    assert joined.shape[0] == np.unique(joined).shape[0], "a sample is in two partitions"
    assert np.array_equal(np.sort(joined), np.arange(pool_size)), "some sample is in no partition"


def test_partitioner_names() -> None:
    assert PARTITIONERS == ("iid", "dirichlet", "shards", "quantity")


@pytest.mark.parametrize(
    ("partitioner", "options"),
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.3}),
        ("shards", {"shards_per_client": 2}),
        ("quantity", {"alpha": 0.5}),
        ("quantity", {"size_scheme": "linear"}),
    ],
)
def test_partitions_are_disjoint_and_cover_the_pool(digits: DataBundle, partitioner: str, options: dict) -> None:
    fed = FederatedData(digits, num_partitions=12, partitioner=partitioner, seed=1, **options)
    assert_disjoint_and_covering(fed, len(digits.train))


@pytest.mark.parametrize("partitioner", PARTITIONERS)
def test_same_seed_same_partitions_and_other_seed_differs(digits: DataBundle, partitioner: str) -> None:
    first = FederatedData(digits, num_partitions=8, partitioner=partitioner, seed=7)
    again = FederatedData(digits, num_partitions=8, partitioner=partitioner, seed=7)
    other = FederatedData(digits, num_partitions=8, partitioner=partitioner, seed=8)
    for p in (0, 3, 7):
        assert np.array_equal(first.partition_indices(p), again.partition_indices(p))
        (train_a, val_a), (train_b, val_b) = first.partition(p), again.partition(p)
        assert torch.equal(train_a.x, train_b.x) and torch.equal(val_a.y, val_b.y)
    assert any(not np.array_equal(first.partition_indices(p), other.partition_indices(p)) for p in range(8))


def test_iid_partitions_are_equal_sized_and_mirror_the_global_label_mix(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=10, partitioner="iid")
    sizes = [idx.shape[0] for idx in all_indices(fed)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(digits.train)
    assert mean_total_variation(fed, pool_labels(digits)) < 0.12


def test_dirichlet_skew_grows_as_alpha_shrinks(digits: DataBundle) -> None:
    labels = pool_labels(digits)
    skew = {
        alpha: mean_total_variation(FederatedData(digits, num_partitions=10, partitioner="dirichlet", alpha=alpha), labels)
        for alpha in (0.1, 1.0, 100.0)
    }
    iid = mean_total_variation(FederatedData(digits, num_partitions=10, partitioner="iid"), labels)
    assert skew[0.1] > 0.5  # most of a client's data is from a few classes
    assert skew[0.1] > skew[1.0] + 0.15 > skew[100.0] + 0.15
    assert skew[100.0] < 0.15 and abs(skew[100.0] - iid) < 0.1  # large alpha ~ IID


def test_dirichlet_partitions_honour_min_partition_size(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=20, partitioner="dirichlet", alpha=0.5, min_partition_size=20)
    assert min(idx.shape[0] for idx in all_indices(fed)) >= 20


@pytest.mark.parametrize("k", [1, 2, 4])
def test_shards_give_each_client_at_most_k_classes(digits: DataBundle, k: int) -> None:
    fed = FederatedData(digits, num_partitions=15, partitioner="shards", shards_per_client=k, seed=2)
    labels = pool_labels(digits)
    classes_per_client = [np.unique(labels[idx]).shape[0] for idx in all_indices(fed)]
    assert max(classes_per_client) <= k
    assert classes_per_client.count(k) >= 13  # nearly all hold exactly k (classes split over holders)
    assert all(np.count_nonzero(fed.label_counts(p)) <= k for p in range(15))


def test_shards_accept_k_alias(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=10, partitioner="shards", k=3)
    assert fed.options.shards_per_client == 3


def test_quantity_dirichlet_sizes_skew_with_alpha_and_labels_stay_iid(digits: DataBundle) -> None:
    def size_spread(alpha: float) -> float:
        fed = FederatedData(digits, num_partitions=10, partitioner="quantity", alpha=alpha, seed=3)
        sizes = np.array([idx.shape[0] for idx in all_indices(fed)])
        assert sizes.min() >= 1 and sizes.sum() == len(digits.train)
        return float(sizes.std() / sizes.mean())

    assert size_spread(0.2) > 1.0  # a few clients hold most data
    assert size_spread(0.2) > size_spread(100.0) + 0.5
    assert size_spread(100.0) < 0.2
    fed = FederatedData(digits, num_partitions=4, partitioner="quantity", alpha=1.0)
    assert mean_total_variation(fed, pool_labels(digits)) < 0.15


@pytest.mark.parametrize(("scheme", "weight"), [("linear", lambda r: r), ("square", lambda r: r * r)])
def test_quantity_fixed_size_schemes_follow_their_law(digits: DataBundle, scheme: str, weight) -> None:
    fed = FederatedData(digits, num_partitions=6, partitioner="quantity", size_scheme=scheme)
    sizes = np.array([idx.shape[0] for idx in all_indices(fed)])
    units = np.array([weight(r) for r in range(1, 7)], dtype=float)
    expected = units / units.sum() * len(digits.train)
    assert np.all(np.abs(sizes[:-1] - expected[:-1]) <= 1.0)  # flwr gives rounding leftovers to the last
    assert sizes.sum() == len(digits.train) and np.all(np.diff(sizes) > 0)


def test_local_train_val_split(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=5, val_fraction=0.25, seed=4)
    for p in range(5):
        idx = fed.partition_indices(p)
        train, val = fed.partition(p)
        assert len(val) == round(0.25 * idx.shape[0]) and len(train) + len(val) == idx.shape[0]
        # the two parts are the partition's samples, split without overlap
        merged = torch.cat([train.y, val.y]).sort().values
        assert torch.equal(merged, digits.train.y[torch.as_tensor(idx)].sort().values)
        assert np.array_equal(fed.label_counts(p), np.bincount(train.y.numpy(), minlength=10))
    none = FederatedData(digits, num_partitions=5, val_fraction=0.0)
    assert len(none.partition(0)[1]) == 0


def test_server_test_set_is_held_out(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=3)
    assert fed.server_test is digits.test
    assert fed.num_classes == 10 and fed.input_shape == (1, 8, 8)


def test_iid_with_more_partitions_than_samples_gives_empty_partitions(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=2000, partitioner="iid")
    sizes = [fed.partition_indices(p).shape[0] for p in (0, 1436, 1437, 1999)]
    assert sizes == [1, 1, 0, 0]
    train, val = fed.partition(1999)
    assert len(train) == 0 and len(val) == 0 and train.x.shape == (0, 1, 8, 8)
    assert fed.label_counts(1999).tolist() == [0] * 10


def test_lru_cache_keeps_recent_partitions_only(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=10, cache_size=3)
    first = fed.partition(0)
    assert fed.partition(0)[0] is first[0]  # cached object reused
    for p in range(1, 5):
        fed.partition(p)
    assert fed.cached_partition_ids() == [2, 3, 4]
    fed.partition(2)
    assert fed.cached_partition_ids() == [3, 4, 2]
    rebuilt = fed.partition(0)  # evicted, rebuilt identically
    assert rebuilt[0] is not first[0] and torch.equal(rebuilt[0].x, first[0].x)


def test_federated_data_pickles_without_its_cache(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=4, partitioner="dirichlet", alpha=0.5)
    fed.partition(1)
    clone = pickle.loads(pickle.dumps(fed))
    assert clone.cached_partition_ids() == []
    assert torch.equal(clone.partition(1)[0].x, fed.partition(1)[0].x)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"partitioner": "banana"}, "partitioner='banana'"),
        ({"partitioner": "dirichlet", "alpha": 0.0}, "alpha=0.0"),
        ({"partitioner": "dirichlet", "alpha": -1}, "alpha=-1"),
        ({"partitioner": "quantity", "alpha": 0}, "alpha=0"),
        ({"partitioner": "shards", "shards_per_client": 0}, "shards_per_client=0"),
        ({"partitioner": "shards", "shards_per_client": 11}, "shards_per_client=11"),
        ({"num_partitions": 0}, "num_partitions=0"),
        ({"partitioner": "dirichlet", "num_partitions": 2000}, "num_partitions=2000"),
        ({"partitioner": "shards", "num_partitions": 1500}, "num_partitions=1500"),
        ({"partitioner": "quantity", "size_scheme": "exponential", "num_partitions": 30}, "num_partitions=30"),
        ({"partitioner": "dirichlet", "alpha": 0.01, "num_partitions": 400}, "num_partitions=400"),
        ({"partitioner": "quantity", "size_scheme": "zipf"}, "size_scheme='zipf'"),
        ({"val_fraction": 1.0}, "val_fraction=1.0"),
    ],
)
def test_bad_partitioning_is_a_one_line_value_error(digits: DataBundle, kwargs: dict, needle: str) -> None:
    kwargs = {"num_partitions": 10, **kwargs}
    with pytest.raises(ValueError) as info:
        FederatedData(digits, **kwargs)
    message = str(info.value)
    assert needle in message and "allowed" in message and "\n" not in message


def test_options_of_other_schemes_are_ignored_but_unknown_options_are_not(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=4, partitioner="iid", alpha=0.5, shards_per_client=50)
    assert fed.partitioner == "iid"
    with pytest.raises(TypeError, match="alpah"):
        FederatedData(digits, num_partitions=4, alpah=0.5)


def test_partition_id_out_of_range(digits: DataBundle) -> None:
    fed = FederatedData(digits, num_partitions=4)
    with pytest.raises(IndexError, match="partition_id=4"):
        fed.partition(4)
    with pytest.raises(IndexError):
        fed.label_counts(-1)


def test_make_federated_data_from_a_data_config_mapping() -> None:
    fed = make_federated_data(
        {"name": "digits", "partitioner": "shards", "shards_per_client": 2, "resolution": 28, "val_fraction": 0.2},
        num_partitions=10, seed=3,
    )
    assert fed.input_shape == (1, 28, 28) and fed.partitioner == "shards" and fed.seed == 3
    assert np.count_nonzero(fed.label_counts(0)) <= 2


def test_make_federated_data_from_a_run_config_like_object() -> None:
    class Run:
        seed = 5
        num_terminals = 1000
        data = type("Data", (), {"name": "synthetic", "samples_per_client": 20, "partitioner": "dirichlet",
                                 "alpha": 0.2, "resolution": 0, "root": "", "download": False})()

    fed = make_federated_data(Run())
    assert fed.is_generated and fed.num_partitions == 1000 and fed.seed == 5
    train, val = fed.partition(999)
    assert len(train) + len(val) == 20
    with pytest.raises(ValueError, match="samples_per_client=20"):
        make_federated_data({"name": "digits", "samples_per_client": 20}, num_partitions=2)
