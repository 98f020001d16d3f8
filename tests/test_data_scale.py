"""Large populations: per-client synthetic generation and lazy IID partitions of a finite pool.

The engine requirement: 100,000 emulated terminals, 100 sampled per round, < 4 GB RSS, and a
per-round cost that does not depend on the population size.
"""

from __future__ import annotations

import resource
import time
import tracemalloc

import numpy as np
import pytest
import torch

from fedsplit.data import DataBundle, FederatedData, SyntheticSpec, load_dataset

POPULATION = 100_000
SAMPLED = 100


def fetch_round(fed: FederatedData, seed: int) -> list[int]:
    """Materialise the partitions of ``SAMPLED`` random clients; return their train sizes."""
    ids = np.random.default_rng(seed).choice(fed.num_partitions, size=SAMPLED, replace=False)
    return [len(fed.partition(int(p))[0]) for p in ids]


def build_and_fetch(make, population: int, traced_fetches: int = SAMPLED) -> tuple[float, int, list[int]]:
    """Build a population and fetch one round of ``SAMPLED`` clients.

    Returns the wall seconds of that (untraced), the peak bytes traced by :mod:`tracemalloc`
    (NumPy and Python allocations, where anything O(population) would show) while building it
    again and fetching ``traced_fetches`` clients, and the train sizes of the round.
    """
    start = time.perf_counter()
    sizes = fetch_round(make(population), seed=1)
    seconds = time.perf_counter() - start
    tracemalloc.start()
    fed = make(population)
    for p in np.random.default_rng(2).choice(population, size=traced_fetches, replace=False):
        fed.partition(int(p))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak, sizes


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def test_generated_population_of_100k_is_lazy_and_population_independent() -> None:
    spec = SyntheticSpec(samples_per_client=40, height=28, width=28)

    def make(population: int) -> FederatedData:
        return FederatedData(spec, num_partitions=population, partitioner="dirichlet", alpha=0.3, cache_size=256)

    make(10).partition(0)  # warm-up
    small_s, small_peak, small_sizes = build_and_fetch(make, 1_000)
    big_s, big_peak, big_sizes = build_and_fetch(make, POPULATION)
    print(f"\ngenerated: 1k build+round {small_s:.3f}s peak {small_peak / 2**20:.3f} MiB; "
          f"100k build+round {big_s:.3f}s peak {big_peak / 2**20:.3f} MiB; max RSS {max_rss_bytes() / 2**30:.2f} GiB")
    assert sum(big_sizes) == SAMPLED * 36  # 40 per client, 10 % kept for validation
    assert big_s < 2.0
    assert big_s < 3 * small_s + 0.5  # time does not scale with the population (100x larger)
    assert big_peak < small_peak + 256 * 2**10  # nor does memory (an int64 per client would be 0.8 MB)
    assert max_rss_bytes() < 4 * 2**30


def test_generated_client_does_not_depend_on_population_or_other_clients() -> None:
    spec = SyntheticSpec(samples_per_client=30, height=8, width=8, seed=2)
    small = FederatedData(spec, num_partitions=10, partitioner="dirichlet", alpha=0.5, seed=4)
    big = FederatedData(spec, num_partitions=POPULATION, partitioner="dirichlet", alpha=0.5, seed=4)
    big.partition(99_999)
    for p in (0, 7):
        assert torch.equal(small.partition(p)[0].x, big.partition(p)[0].x)
    other_seed = FederatedData(spec, num_partitions=10, partitioner="dirichlet", alpha=0.5, seed=5)
    assert not torch.equal(small.partition(0)[0].x, other_seed.partition(0)[0].x)
    assert not torch.equal(small.partition(0)[0].x, small.partition(1)[0].x)


def test_load_dataset_with_samples_per_client_selects_generation() -> None:
    bundle = load_dataset("synthetic", samples_per_client=25, resolution=8, num_test=50)
    assert bundle.generated_per_client and len(bundle.train) == 0 and len(bundle.test) == 50
    fed = FederatedData(bundle, num_partitions=POPULATION)
    assert fed.is_generated and fed.server_test is bundle.test
    train, val = fed.partition(12_345)
    assert len(train) + len(val) == 25 and train.x.shape[1:] == (1, 8, 8)


def total_variation_from_uniform(fed: FederatedData, clients: range) -> float:
    tv = []
    for p in clients:
        counts = fed.label_counts(p) + np.bincount(fed.partition(p)[1].y.numpy(), minlength=fed.num_classes)
        tv.append(0.5 * np.abs(counts / counts.sum() - 1 / fed.num_classes).sum())
    return float(np.mean(tv))


def test_generated_dirichlet_label_skew_grows_as_alpha_shrinks() -> None:
    spec = SyntheticSpec(samples_per_client=200, height=4, width=4)
    skew = {
        alpha: total_variation_from_uniform(
            FederatedData(spec, num_partitions=POPULATION, partitioner="dirichlet", alpha=alpha), range(40)
        )
        for alpha in (0.1, 1.0, 100.0)
    }
    iid = total_variation_from_uniform(FederatedData(spec, num_partitions=POPULATION), range(40))
    assert skew[0.1] > 0.6 and skew[0.1] > skew[1.0] + 0.15 > skew[100.0] + 0.15
    assert iid < 0.2 and skew[100.0] < 0.2


def test_generated_shards_and_quantity() -> None:
    spec = SyntheticSpec(samples_per_client=50, height=4, width=4)
    shards = FederatedData(spec, num_partitions=POPULATION, partitioner="shards", shards_per_client=2)
    for p in range(0, POPULATION, 5_000):
        labels = torch.cat([part.y for part in shards.partition(p)])
        assert torch.unique(labels).numel() <= 2
    quantity = FederatedData(spec, num_partitions=POPULATION, partitioner="quantity", alpha=0.5)
    sizes = np.array([sum(len(part) for part in quantity.partition(p)) for p in range(300)])
    assert sizes.min() >= 1 and 40 < sizes.mean() < 60  # mean samples_per_client
    assert sizes.std() / sizes.mean() > 1.0  # Gamma(0.5) sizes: coefficient of variation sqrt(2)
    linear = FederatedData(spec, num_partitions=1_000, partitioner="quantity", size_scheme="linear")
    first, last = (sum(len(part) for part in linear.partition(p)) for p in (0, 999))
    assert first == 1 and last == round(50 * 1000 / 500.5)
    with pytest.raises(ValueError, match="size_scheme='exponential'"):
        FederatedData(spec, num_partitions=POPULATION, partitioner="quantity", size_scheme="exponential")
    small_exponential = FederatedData(spec, num_partitions=5, partitioner="quantity", size_scheme="exponential")
    sizes = [sum(len(part) for part in small_exponential.partition(p)) for p in range(5)]
    assert sizes == sorted(sizes) and sizes[-1] > 2.5 * sizes[-2]


def test_generated_population_is_learnable_by_the_server() -> None:
    spec = SyntheticSpec(samples_per_client=60, height=8, width=8)
    fed = FederatedData(spec, num_partitions=POPULATION, partitioner="iid", val_fraction=0.0)
    parts = [fed.partition(p)[0] for p in range(0, POPULATION, POPULATION // 20)]
    x = torch.cat([part.x for part in parts]).flatten(1)
    y = torch.cat([part.y for part in parts])
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], fed.num_classes)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: a thread pool only adds contention on a shared 2-core box
    try:
        for _ in range(100):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
        with torch.no_grad():
            accuracy = float((model(fed.server_test.x.flatten(1)).argmax(1) == fed.server_test.y).float().mean())
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.7  # chance 0.1


@pytest.fixture(scope="module")
def big_pool() -> DataBundle:
    # a finite pool as large as the population: IID gives every client exactly one sample
    return load_dataset("synthetic", num_train=POPULATION, num_test=10, resolution=4)


def test_finite_pool_iid_100k_partitions_are_lazy(big_pool: DataBundle) -> None:
    def make(population: int) -> FederatedData:
        return FederatedData(big_pool, num_partitions=population, partitioner="iid", val_fraction=0.0)

    make(10).partition(0)  # warm-up (imports datasets/flwr-datasets)
    # tracing slows Hugging Face's Python-heavy code a lot: trace 10 fetches (memory per fetch is O(1))
    small_s, small_peak, small_sizes = build_and_fetch(make, 1_000, traced_fetches=10)
    big_s, big_peak, big_sizes = build_and_fetch(make, POPULATION, traced_fetches=10)
    print(f"\nfinite iid: 1k build+round {small_s:.3f}s peak {small_peak / 2**20:.3f} MiB; "
          f"100k build+round {big_s:.3f}s peak {big_peak / 2**20:.3f} MiB")
    assert small_sizes == [100] * SAMPLED and big_sizes == [1] * SAMPLED
    assert big_s < 5.0
    assert big_peak < small_peak + 256 * 2**10  # nothing O(num_partitions) (an int64 each = 0.8 MB)
    fed = make(POPULATION)
    seen = np.concatenate([fed.partition_indices(p) for p in range(0, POPULATION, 997)])
    assert np.unique(seen).shape[0] == seen.shape[0]  # still disjoint
