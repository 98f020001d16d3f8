"""Partitioning schemes: which pool samples go to which client.

A finite pool (digits, MNIST, ...) is split by the flwr-datasets partitioners applied to an
in-memory Hugging Face ``datasets.Dataset`` with two columns, ``index`` (position in the pool)
and ``label``; no network and no disk cache are involved. The rows are put in a seeded random
order first, so the order-based flwr schemes (IID shards, size schemes) see a shuffled pool.

=============  ===================================================================================
scheme         flwr-datasets partitioner, and what it guarantees
=============  ===================================================================================
``iid``        :class:`~flwr_datasets.partitioner.IidPartitioner`: contiguous shards of the
               shuffled pool. Lazy: partition ``p``'s rows are a range computed from ``p`` alone
               (``Dataset.shard(contiguous=True)``), so nothing O(num_partitions) is built. With
               more partitions than samples, partitions ``p >= len(pool)`` are empty (allowed;
               handled here because ``Dataset.shard`` raises on an empty range).
``dirichlet``  :class:`~flwr_datasets.partitioner.DirichletPartitioner`: per class, shares drawn
               from ``Dirichlet(alpha)`` over the partitions (label skew; smaller ``alpha`` =
               more skew); redrawn until every partition holds ``min_partition_size`` samples
               (at most 11 draws, else :class:`ValueError`). Built for all partitions at once.
``shards``     :class:`~flwr_datasets.partitioner.PathologicalPartitioner` with
               ``class_assignment_mode="first-deterministic"``: partition ``p`` holds exactly
               ``shards_per_client = k`` classes, class ``p mod K`` plus ``k - 1`` random ones,
               and each class's samples are split evenly among the partitions holding it. With
               ``num_partitions >= num_classes`` every class (so every sample) is used.
               (flwr's ``ShardPartitioner`` - sort by label, deal fixed-size shards - is not used:
               a shard can straddle a class boundary, so it cannot promise at most ``k`` classes.)
``quantity``   Sizes skewed, labels IID. ``size_scheme="dirichlet"`` (default): size shares
               ``q ~ Dirichlet(alpha * 1)`` over partitions, each partition at least
               ``min_partition_size``, fed to :class:`~flwr_datasets.partitioner.SizePartitioner`.
               ``"linear"``, ``"square"``, ``"exponential"``: sizes proportional to ``p + 1``,
               ``(p + 1)^2``, ``e^(p + 1)`` via flwr's ``LinearPartitioner``,
               ``SquarePartitioner``, ``ExponentialPartitioner`` (exponential leaves the small
               ids empty beyond a handful of partitions, which is refused with ValueError).
=============  ===================================================================================

flwr-datasets and Hugging Face ``datasets`` are imported on first use only, so
``import fedsplit.data`` stays light.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsplit.data.errors import PartitionError

#: Partitioner names accepted by :class:`fedsplit.data.FederatedData`.
PARTITIONERS: tuple[str, ...] = ("iid", "dirichlet", "shards", "quantity")

#: How ``quantity`` spreads sizes over partitions.
SIZE_SCHEMES: tuple[str, ...] = ("dirichlet", "linear", "square", "exponential")

#: Option names, and the aliases accepted for them.
_OPTION_ALIASES: dict[str, str] = {"k": "shards_per_client", "classes_per_client": "shards_per_client"}


@dataclass(frozen=True)
class PartitionOptions:
    """Knobs of the partitioning schemes (each scheme reads only its own).

    Attributes
    ----------
    alpha : float
        Dirichlet concentration (``dirichlet``: label shares; ``quantity`` with
        ``size_scheme="dirichlet"``: size shares). Smaller = more skew.
    shards_per_client : int
        ``shards``: number of classes each client holds (``k``).
    size_scheme : str
        ``quantity``: one of :data:`SIZE_SCHEMES`.
    min_partition_size : int
        ``dirichlet`` and ``quantity`` (dirichlet sizes): least samples per partition.
    """

    alpha: float = 0.5
    shards_per_client: int = 2
    size_scheme: str = "dirichlet"
    min_partition_size: int = 1


def canonical_partitioner_name(name: str) -> str:
    """``name`` as spelled in :data:`PARTITIONERS`; ValueError if unknown."""
    key = str(name).strip().lower()
    if key not in PARTITIONERS:
        raise ValueError(f"partitioner={name!r} is not known; allowed: {', '.join(PARTITIONERS)}")
    return key


def resolve_partition_options(
    partitioner: str, *, num_partitions: int, num_classes: int, options: dict[str, Any]
) -> tuple[str, PartitionOptions]:
    """Validate a partitioner name, population size and options.

    Options that belong to another scheme are accepted and ignored (so a config can always
    pass ``alpha`` and ``shards_per_client``); only the chosen scheme's are checked.

    Raises
    ------
    ValueError
        Unknown partitioner, ``num_partitions < 1``, ``alpha <= 0``, ``shards_per_client`` not in
        ``1..num_classes``, unknown ``size_scheme``, ``min_partition_size < 1``.
    TypeError
        For an option name no scheme knows.
    """
    name = canonical_partitioner_name(partitioner)
    if isinstance(num_partitions, bool) or int(num_partitions) != num_partitions or num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions!r} is not valid; allowed: an integer >= 1")
    known = {"alpha", "shards_per_client", "size_scheme", "min_partition_size"}
    values: dict[str, Any] = {}
    for key, value in options.items():
        canonical = _OPTION_ALIASES.get(key, key)
        if canonical not in known:
            raise TypeError(
                f"unknown partitioner option {key!r}; allowed: {', '.join(sorted(known | set(_OPTION_ALIASES)))}"
            )
        if canonical in values and values[canonical] != value:
            raise ValueError(f"{key}={value!r} conflicts with {canonical}={values[canonical]!r}")
        values[canonical] = value
    opts = PartitionOptions(**values)
    uses_alpha = name == "dirichlet" or (name == "quantity" and opts.size_scheme == "dirichlet")
    if uses_alpha and not (float(opts.alpha) > 0 and np.isfinite(float(opts.alpha))):
        raise ValueError(f"alpha={opts.alpha!r} is not valid; allowed: a finite value > 0 (smaller = more skew)")
    if name == "shards" and not 1 <= int(opts.shards_per_client) <= num_classes:
        raise ValueError(
            f"shards_per_client={opts.shards_per_client!r} is not valid; "
            f"allowed: 1 <= k <= num_classes={num_classes}"
        )
    if name == "quantity" and opts.size_scheme not in SIZE_SCHEMES:
        raise ValueError(f"size_scheme={opts.size_scheme!r} is not known; allowed: {', '.join(SIZE_SCHEMES)}")
    if int(opts.min_partition_size) < 1:
        raise ValueError(f"min_partition_size={opts.min_partition_size!r} is not valid; allowed: >= 1")
    return name, opts


def seeded_generator(*key: int) -> np.random.Generator:
    """A NumPy generator seeded from the non-negative integer tuple ``key``."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


#: Stream tags for :func:`seeded_generator` (``(seed, tag, ...)``); distinct from the synthetic task's.
STREAM_POOL_ORDER = 101
STREAM_QUANTITY_SIZES = 102


class PoolPartitioner:
    """Assigns the rows of a finite labelled pool to ``num_partitions`` partitions.

    Parameters
    ----------
    labels : numpy.ndarray
        Class label of every pool sample, shape ``[N]``.
    num_partitions : int
        Number of partitions.
    scheme : str
        One of :data:`PARTITIONERS` (validated by :func:`resolve_partition_options`).
    options : PartitionOptions
        The scheme's knobs.
    seed : int
        Seeds the pool order and the flwr partitioner; same seed, same partitions.

    Notes
    -----
    The flwr partitioner is built in the constructor and, for every scheme but ``iid``, asked
    for one partition right away so that the whole assignment is drawn once (and errors such
    as "some partition would be empty" surface at construction). Afterwards
    :meth:`indices` reads one partition's rows back through flwr's ``load_partition``
    (a ``Dataset.select``, a few milliseconds); callers cache the result.
    """

    def __init__(
        self, labels: np.ndarray, num_partitions: int, scheme: str, options: PartitionOptions, seed: int
    ) -> None:
        import datasets

        self.num_partitions = int(num_partitions)
        self.scheme = scheme
        self.options = options
        self.seed = int(seed)
        labels = np.asarray(labels, dtype=np.int64)
        self.pool_size = int(labels.shape[0])
        order = seeded_generator(self.seed, STREAM_POOL_ORDER).permutation(self.pool_size)
        table = datasets.Dataset.from_dict({"index": order, "label": labels[order]})
        self._check_feasible(labels)
        self._flwr = self._make_flwr_partitioner(labels)
        self._flwr.dataset = table
        if scheme != "iid":
            self._draw_assignment()

    def indices(self, partition_id: int) -> np.ndarray:
        """Pool indices (int64, in the partition's order) of partition ``partition_id``."""
        if self.scheme == "iid" and self._iid_is_empty(partition_id):
            return np.empty(0, dtype=np.int64)
        part = self._flwr.load_partition(int(partition_id))
        return np.asarray(part.with_format("arrow")["index"], dtype=np.int64).copy()  # writable

    def _iid_is_empty(self, partition_id: int) -> bool:
        return self.pool_size // self.num_partitions == 0 and partition_id >= self.pool_size % self.num_partitions

    def _check_feasible(self, labels: np.ndarray) -> None:
        if self.scheme == "iid":
            return
        need = self.num_partitions * (self.options.min_partition_size if self.scheme != "shards" else 1)
        if need > self.pool_size:
            raise ValueError(
                f"num_partitions={self.num_partitions} is too many for partitioner={self.scheme!r} on "
                f"{self.pool_size} pool samples; allowed: num_partitions <= "
                f"{self.pool_size // max(1, need // self.num_partitions)} (every partition needs data)"
            )

    def _make_flwr_partitioner(self, labels: np.ndarray) -> Any:
        from flwr_datasets import partitioner as fp

        opts = self.options
        if self.scheme == "iid":
            return fp.IidPartitioner(num_partitions=self.num_partitions)
        if self.scheme == "dirichlet":
            return fp.DirichletPartitioner(
                num_partitions=self.num_partitions, partition_by="label", alpha=float(opts.alpha),
                min_partition_size=int(opts.min_partition_size), self_balancing=False,
                shuffle=True, seed=self.seed,
            )
        if self.scheme == "shards":
            return fp.PathologicalPartitioner(
                num_partitions=self.num_partitions, partition_by="label",
                num_classes_per_partition=int(opts.shards_per_client),
                class_assignment_mode="first-deterministic", shuffle=True, seed=self.seed,
            )
        if opts.size_scheme == "dirichlet":
            return fp.SizePartitioner(partition_sizes=self._dirichlet_sizes())
        by_scheme = {
            "linear": fp.LinearPartitioner,
            "square": fp.SquarePartitioner,
            "exponential": fp.ExponentialPartitioner,
        }
        return by_scheme[opts.size_scheme](num_partitions=self.num_partitions)

    def _dirichlet_sizes(self) -> list[int]:
        """Sizes ``min + Multinomial(N - P*min, q)`` with ``q ~ Dirichlet(alpha)``; they sum to N."""
        rng = seeded_generator(self.seed, STREAM_QUANTITY_SIZES)
        floor = int(self.options.min_partition_size)
        shares = rng.dirichlet(np.full(self.num_partitions, float(self.options.alpha)))
        extra = rng.multinomial(self.pool_size - floor * self.num_partitions, shares)
        return (extra + floor).astype(int).tolist()

    def _draw_assignment(self) -> None:
        try:
            with warnings.catch_warnings():
                # flwr warns on every Dirichlet redraw and on unused classes; we report failures below.
                warnings.simplefilter("ignore")
                self._flwr.load_partition(0)
        except ValueError as error:
            raise PartitionError(self._explain_failure(error)) from error

    def _explain_failure(self, error: ValueError) -> str:
        opts = self.options
        if self.scheme == "dirichlet":
            return (
                f"num_partitions={self.num_partitions} with alpha={opts.alpha} left a partition with fewer "
                f"than min_partition_size={opts.min_partition_size} of {self.pool_size} samples in 11 "
                "Dirichlet draws; allowed: fewer partitions (terminals) or a larger alpha"
                + (" or a smaller min_partition_size" if opts.min_partition_size > 1 else "")
            )
        if self.scheme == "shards":
            return (
                f"num_partitions={self.num_partitions} with shards_per_client={opts.shards_per_client} needs "
                f"some class in more partitions than it has samples ({self.pool_size} pool samples); "
                f"allowed: fewer partitions or fewer classes per client (flwr: {error})"
            )
        return (
            f"num_partitions={self.num_partitions} with size_scheme={opts.size_scheme!r} gives some partition "
            f"no samples of {self.pool_size}; allowed: fewer partitions or size_scheme='dirichlet' "
            f"(flwr: {error})"
        )


class DrawnPartitions:
    """Every partition's pool indices, drawn once by a :class:`PoolPartitioner`: what a process
    that was handed the data needs to read partitions, without flwr-datasets (and the Hugging Face
    ``datasets``, pandas and seaborn it imports, seconds on a small machine).

    :meth:`indices` returns the same values as the partitioner it was drawn from, a fresh writable
    copy each call, as :meth:`PoolPartitioner.indices` does.
    """

    def __init__(self, partitioner: PoolPartitioner) -> None:
        self._indices = [partitioner.indices(p) for p in range(partitioner.num_partitions)]

    def indices(self, partition_id: int) -> np.ndarray:
        """Pool indices (int64, in the partition's order) of partition ``partition_id``."""
        return self._indices[int(partition_id)].copy()
