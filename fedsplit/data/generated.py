"""Per-client generation of synthetic data: nothing of size O(population) is ever built.

Client ``p`` of a population draws its own label distribution, size and samples from a
random stream seeded by ``(task seed, STREAM_CLIENT, run seed, p)``, so its data is the same
whichever other clients were materialised, and a population of 100,000 costs nothing until a
client is sampled. The partitioning schemes become per-client draws:

=============  ==================================================================================
scheme         client ``p`` (``n = samples_per_client``, ``K`` classes)
=============  ==================================================================================
``iid``        ``n`` samples, labels uniform over the ``K`` classes.
``dirichlet``  class probabilities ``pi_p ~ Dirichlet(alpha * 1_K)`` drawn for the client, then
               ``n`` labels from ``pi_p`` (label skew; smaller ``alpha`` = more skew).
``shards``     ``k = shards_per_client`` distinct classes drawn for the client, ``n`` labels
               uniform over them.
``quantity``   labels uniform; size ``max(min_partition_size, round(n * w_p))`` with mean weight
               one: ``size_scheme="dirichlet"`` draws ``w_p ~ Gamma(alpha, 1/alpha)`` (the
               per-coordinate law of ``P * Dirichlet(alpha * 1_P)`` as ``P`` grows, so it matches
               the finite scheme without normalising over the population); ``"linear"``,
               ``"square"``, ``"exponential"`` use ``w_p`` proportional to ``p + 1``,
               ``(p + 1)^2``, ``e^(p + 1)``, normalised in closed form over the population
               (a scheme that would give one client more than 100x ``n``, i.e. exponential
               beyond ~150 clients, is refused: that client alone would be O(population)).
               Gamma sizes are not capped: with a tiny ``alpha`` a rare client can be large.
=============  ==================================================================================
"""

from __future__ import annotations

import math

import numpy as np

from fedsplit.data.arrays import ArrayDataset
from fedsplit.data.partitioners import PartitionOptions
from fedsplit.data.synthetic import STREAM_CLIENT, SyntheticSpec, SyntheticTask, stream


#: Largest size weight ``w_p`` a fixed size scheme may give one client (else ValueError): with
#: ``exponential`` the last client holds ~63 % of all data, i.e. O(population) samples.
MAX_SIZE_WEIGHT = 100.0


class GeneratedClients:
    """Draws client ``p``'s whole partition (before its train/validation split) on demand.

    Parameters
    ----------
    spec : SyntheticSpec
        The task; ``spec.samples_per_client`` must be set.
    num_partitions : int
        Population size ``P`` (only the size schemes ``linear``/``square``/``exponential`` use it).
    scheme : str
        One of :data:`fedsplit.data.PARTITIONERS`.
    options : PartitionOptions
        The scheme's knobs.
    seed : int
        Run seed, mixed into every client's stream.
    """

    def __init__(
        self, spec: SyntheticSpec, num_partitions: int, scheme: str, options: PartitionOptions, seed: int
    ) -> None:
        if spec.samples_per_client is None:
            raise ValueError("samples_per_client=None is not valid here; allowed: an integer >= 1")
        self.spec = spec
        self.task = SyntheticTask(spec)
        self.num_partitions = int(num_partitions)
        self.scheme = scheme
        self.options = options
        self.seed = int(seed)
        if scheme == "quantity" and options.size_scheme != "dirichlet":
            largest = math.exp(self._log_weight(self.num_partitions - 1, options.size_scheme))
            if largest > MAX_SIZE_WEIGHT:
                raise ValueError(
                    f"num_partitions={self.num_partitions} is too many for size_scheme={options.size_scheme!r} "
                    f"with per-client generation (the last client would hold {largest:.0f}x samples_per_client); "
                    f"allowed: a population whose largest client is <= {MAX_SIZE_WEIGHT}x, or size_scheme='dirichlet'"
                )

    def partition_data(self, partition_id: int) -> ArrayDataset:
        """All samples of client ``partition_id`` (same result on every call)."""
        rng = stream(self.spec.seed, STREAM_CLIENT, self.seed, int(partition_id))
        labels = self.labels(partition_id, rng)
        return self.task.sample(labels, rng)

    def labels(self, partition_id: int, rng: np.random.Generator) -> np.ndarray:
        """Client ``partition_id``'s labels, drawn from ``rng`` according to the scheme."""
        num_classes = self.spec.num_classes
        size = self.size(partition_id, rng)
        if self.scheme == "dirichlet":
            probs = rng.dirichlet(np.full(num_classes, float(self.options.alpha)))
            return rng.choice(num_classes, size=size, p=probs)
        if self.scheme == "shards":
            classes = rng.choice(num_classes, size=int(self.options.shards_per_client), replace=False)
            return rng.choice(classes, size=size)
        return rng.integers(0, num_classes, size=size)

    def size(self, partition_id: int, rng: np.random.Generator) -> int:
        """Number of samples of client ``partition_id`` (consumes ``rng`` only for Gamma sizes)."""
        mean = int(self.spec.samples_per_client or 0)
        if self.scheme != "quantity":
            return mean
        floor = int(self.options.min_partition_size)
        scheme = self.options.size_scheme
        if scheme == "dirichlet":
            alpha = float(self.options.alpha)
            weight = rng.gamma(alpha, 1.0 / alpha)
        else:
            weight = math.exp(self._log_weight(partition_id, scheme))
        return max(floor, int(round(mean * weight)))

    def _log_weight(self, partition_id: int, scheme: str) -> float:
        """``log w_p`` with ``w_p`` proportional to ``f(p + 1)`` and ``mean_p w_p = 1``."""
        count = self.num_partitions
        rank = partition_id + 1
        if scheme == "linear":
            return math.log(rank) - math.log((count + 1) / 2)
        if scheme == "square":
            return 2 * math.log(rank) - math.log((count + 1) * (2 * count + 1) / 6)
        # exponential: mean of e^1..e^P = e (e^P - 1) / ((e - 1) P), in logs to avoid overflow
        log_mean = 1 + count + math.log1p(-math.exp(-count)) - math.log(math.e - 1) - math.log(count)
        return rank - log_mean
