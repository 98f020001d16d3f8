"""The federation's view of the data: one lazily materialised partition per client.

:class:`FederatedData` turns a :class:`DataBundle` (a finite pool) or a
:class:`SyntheticSpec` with ``samples_per_client`` (per-client generation) into ``num_partitions``
client partitions, each split into local train / local validation, plus the server's held-out
test set. Partitions are materialised only when asked for and kept in a small LRU cache, so a
round touching 100 clients of a population of 100,000 costs the same as one of 1,000.

:func:`make_federated_data` is the one builder of a run's data from its configuration: the server
and every ClientApp (through :class:`fedsplit.learning.Task`) and the tests all go through it.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedsplit.data.arrays import ArrayDataset, parse_resolution
from fedsplit.data.bundle import DataBundle, parse_classes, select_classes
from fedsplit.data.datasets import canonical_dataset_name, load_dataset
from fedsplit.data.generated import GeneratedClients
from fedsplit.data.partitioners import (
    DrawnPartitions,
    PoolPartitioner,
    canonical_partitioner_name,
    resolve_partition_options,
    seeded_generator,
)
from fedsplit.data.synthetic import SyntheticSpec, SyntheticTask

#: Stream tag of the per-client train/validation split (``(seed, tag, p)``).
STREAM_LOCAL_SPLIT = 103


@dataclass(frozen=True)
class ClientPartition:
    """One client's data: local train and local validation parts."""

    train: ArrayDataset
    val: ArrayDataset


def split_train_val(size: int, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle ``0..size-1`` and cut off ``round(val_fraction * size)`` validation indices.

    The validation part is capped at ``size - 1`` so a non-empty partition always keeps at least
    one training sample; with ``size == 1`` the single sample trains.
    """
    order = rng.permutation(size)
    num_val = min(int(round(val_fraction * size)), max(size - 1, 0))
    return np.sort(order[num_val:]), np.sort(order[:num_val])


class FederatedData:
    """Client partitions (built once, materialised lazily, LRU-cached) and the server's test set.

    Parameters
    ----------
    dataset : DataBundle | SyntheticSpec
        A finite pool (from :func:`fedsplit.data.load_dataset`), or a synthetic task. A
        :class:`SyntheticSpec` with ``samples_per_client`` set, or a bundle from
        ``load_dataset("synthetic", samples_per_client=n)``, is generated per client on demand
        (see :mod:`fedsplit.data.generated`); otherwise the pooled training set is partitioned.
    num_partitions : int
        Number of clients (>= 1).
    partitioner : str
        One of :data:`fedsplit.data.PARTITIONERS` (see :mod:`fedsplit.data.partitioners`).
    seed : int
        Seeds the partitioning and the per-client train/validation splits.
    val_fraction : float
        Fraction of each client's partition kept for local validation, ``0 <= f < 1``.
    cache_size : int
        Materialised partitions kept (least recently used evicted first), >= 1.
    **partitioner_options
        ``alpha``, ``shards_per_client`` (alias ``k``), ``size_scheme``, ``min_partition_size``;
        see :class:`fedsplit.data.partitioners.PartitionOptions`. Options of other schemes are
        ignored.

    Attributes
    ----------
    num_partitions, num_classes, input_shape, server_test, name, partitioner, seed, val_fraction

    Notes
    -----
    With ``partitioner="iid"`` over a finite pool and more partitions than samples, partitions
    ``p >= len(pool)`` are empty: allowed, and :meth:`partition` then returns two empty
    datasets (with the right image shape). Every other scheme refuses empty partitions with
    :class:`ValueError` at construction.

    Memory and time per materialised partition are O(partition size); nothing is O(population)
    except, for the non-IID schemes over a finite pool, flwr's index assignment (built once,
    O(pool size + num_partitions)).
    """

    def __init__(
        self,
        dataset: DataBundle | SyntheticSpec,
        *,
        num_partitions: int,
        partitioner: str = "iid",
        seed: int = 0,
        val_fraction: float = 0.1,
        cache_size: int = 256,
        **partitioner_options: Any,
    ) -> None:
        if not 0.0 <= float(val_fraction) < 1.0:
            raise ValueError(f"val_fraction={val_fraction!r} is not valid; allowed: 0 <= value < 1")
        if int(cache_size) < 1:
            raise ValueError(f"cache_size={cache_size!r} is not valid; allowed: >= 1")
        if int(seed) < 0:
            raise ValueError(f"seed={seed!r} is not valid; allowed: >= 0")
        if isinstance(dataset, SyntheticSpec):
            num_classes, input_shape, name = dataset.num_classes, dataset.input_shape, "synthetic"
        elif isinstance(dataset, DataBundle):
            num_classes, input_shape, name = dataset.num_classes, dataset.input_shape, dataset.name
        else:
            raise TypeError(f"dataset must be a DataBundle or SyntheticSpec, not {type(dataset).__name__}")
        scheme, options = resolve_partition_options(
            partitioner, num_partitions=num_partitions, num_classes=num_classes, options=partitioner_options
        )
        self.num_partitions = int(num_partitions)
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.name = name
        self.partitioner = scheme
        self.options = options
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.cache_size = int(cache_size)
        self._generated: GeneratedClients | None = None
        self._pool: ArrayDataset | None = None
        self._pool_partitioner: PoolPartitioner | DrawnPartitions | None = None
        spec = dataset if isinstance(dataset, SyntheticSpec) else dataset.synthetic
        if spec is not None and spec.samples_per_client is not None:
            self._generated = GeneratedClients(spec, self.num_partitions, scheme, options, self.seed)
            self.server_test = dataset.test if isinstance(dataset, DataBundle) else self._generated.task.test_set()
        else:
            if isinstance(dataset, SyntheticSpec):
                task = SyntheticTask(dataset)
                dataset = DataBundle(
                    task.train_pool(), task.test_set(), num_classes, dataset.input_shape, name, synthetic=dataset
                )
            self._pool = dataset.train
            self.server_test = dataset.test
            self._pool_partitioner = PoolPartitioner(
                dataset.train.y.numpy(), self.num_partitions, scheme, options, self.seed
            )
        self._cache: OrderedDict[int, ClientPartition] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def is_generated(self) -> bool:
        """True when partitions are generated per client (no finite pool)."""
        return self._generated is not None

    def partition(self, partition_id: int) -> tuple[ArrayDataset, ArrayDataset]:
        """Client ``partition_id``'s ``(train, val)`` datasets (cached; same result on every call).

        Raises
        ------
        IndexError
            If ``partition_id`` is not in ``0 .. num_partitions - 1``.
        """
        part = self._client_partition(partition_id)
        return part.train, part.val

    def label_counts(self, partition_id: int) -> np.ndarray:
        """Samples per class (int64, length ``num_classes``) in the train part of a partition."""
        train, _ = self.partition(partition_id)
        return np.bincount(train.y.numpy(), minlength=self.num_classes).astype(np.int64)

    @property
    def partitions_drawn(self) -> bool:
        """True when every partition's pool indices are drawn already (:meth:`with_drawn_partitions`):
        reading partitions then needs no flwr-datasets."""
        return isinstance(self._pool_partitioner, DrawnPartitions)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this object holds: the pool (inputs and labels) and the server's
        test set; 0 for the pool of generated data, which has none."""
        parts = [self.server_test] + ([self._pool] if self._pool is not None else [])
        return sum(t.element_size() * t.nelement() for part in parts for t in (part.x, part.y))

    def with_drawn_partitions(self) -> "FederatedData":
        """The same data, with every partition's pool indices drawn now (:class:`DrawnPartitions`):
        a process it is pickled to reads partitions without flwr-datasets, which it then never
        imports. The arrays are shared, not copied. Generated data, which has no pool to split,
        comes back as it is.

        Draws ``num_partitions`` partitions (about 1.2 ms each on this project's 2-core machine).
        """
        if self._pool_partitioner is None or self.partitions_drawn:
            return self
        drawn = copy.copy(self)  # through __getstate__/__setstate__: an empty cache and a lock of its own
        drawn._pool_partitioner = DrawnPartitions(self._pool_partitioner)
        return drawn

    def partition_indices(self, partition_id: int) -> np.ndarray:
        """Pool indices of a partition (train and validation together); finite pools only."""
        self._check_id(partition_id)
        if self._pool_partitioner is None:
            raise TypeError("partition_indices() needs a finite pool; this FederatedData generates clients")
        return self._pool_partitioner.indices(partition_id)

    def cached_partition_ids(self) -> list[int]:
        """Ids of the materialised partitions, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _client_partition(self, partition_id: int) -> ClientPartition:
        self._check_id(partition_id)
        pid = int(partition_id)
        with self._lock:
            if pid in self._cache:
                self._cache.move_to_end(pid)
                return self._cache[pid]
        part = self._materialise(pid)
        with self._lock:
            self._cache[pid] = part
            self._cache.move_to_end(pid)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return part

    def _materialise(self, partition_id: int) -> ClientPartition:
        if self._generated is not None:
            data = self._generated.partition_data(partition_id)
        else:
            assert self._pool is not None and self._pool_partitioner is not None
            data = self._pool.subset(self._pool_partitioner.indices(partition_id))
        rng = seeded_generator(self.seed, STREAM_LOCAL_SPLIT, partition_id)
        train_idx, val_idx = split_train_val(len(data), self.val_fraction, rng)
        return ClientPartition(data.subset(train_idx), data.subset(val_idx))

    def _check_id(self, partition_id: int) -> None:
        if not 0 <= int(partition_id) < self.num_partitions:
            raise IndexError(
                f"partition_id={partition_id!r} is out of range; allowed: 0 .. {self.num_partitions - 1}"
            )

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        mode = "generated per client" if self.is_generated else f"pool of {len(self._pool or [])}"
        return (
            f"FederatedData({self.name!r}, num_partitions={self.num_partitions}, "
            f"partitioner={self.partitioner!r}, {mode})"
        )


def _read(cfg: Any, key: str, default: Any) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def partitioner_options(data_cfg: Any) -> dict[str, Any]:
    """The partitioner options a data config gives its scheme: each scheme only its own knob.

    ``dirichlet`` gets ``alpha``, ``shards`` gets ``shards_per_client``; ``iid`` and ``quantity``
    get none (``quantity`` keeps :class:`~fedsplit.data.partitioners.PartitionOptions`' defaults,
    as every run has so far: the config documents ``data.alpha`` as the ``dirichlet`` knob).
    """
    scheme = canonical_partitioner_name(_read(data_cfg, "partitioner", "iid"))
    if scheme == "dirichlet":
        return {"alpha": _read(data_cfg, "alpha", 0.5)}
    if scheme == "shards":
        return {"shards_per_client": _read(data_cfg, "shards_per_client", 2)}
    return {}


def make_federated_data(
    cfg: Any,
    *,
    num_partitions: int | None = None,
    seed: int | None = None,
    cache_size: int = 256,
) -> FederatedData:
    """Build :class:`FederatedData` from a config: the one builder of a run's data.

    Parameters
    ----------
    cfg : RunConfig | DataConfig | Mapping
        A ``RunConfig``-like object (with ``.data``, ``.seed`` and ``.num_terminals``; what every
        run passes, through :meth:`fedsplit.learning.Task.from_config`), or a ``DataConfig``-like
        object or mapping.
    num_partitions : int, optional
        Number of clients; default ``cfg.num_terminals`` for a ``RunConfig``.
    seed : int, optional
        Seed of the dataset, the partitioning and the local splits; default ``cfg.seed`` for a
        ``RunConfig``, else 0.
    cache_size : int
        Materialised partitions kept (see :class:`FederatedData`).

    Notes
    -----
    Fields read (all optional): ``name`` (dataset, default ``"digits"``), ``root`` (``""`` =
    default), ``download``, ``partitioner``, ``alpha`` and ``shards_per_client`` (see
    :func:`partitioner_options`), ``val_fraction``, ``resolution`` (0 = native),
    ``samples_per_client`` (synthetic only; 0 = pooled), ``classes`` (``"5-9"``: keep these
    classes, relabelled ``0..k-1``; see :func:`fedsplit.data.bundle.select_classes`).

    Raises
    ------
    ValueError
        As :func:`fedsplit.data.load_dataset` and :class:`FederatedData`; also when
        ``num_partitions`` is not given and cannot be read from the config, or
        ``samples_per_client`` is set for a dataset other than ``synthetic``.
    """
    data_cfg = cfg
    if not isinstance(cfg, Mapping) and hasattr(cfg, "data") and hasattr(cfg, "num_terminals"):
        data_cfg = cfg.data
        num_partitions = cfg.num_terminals if num_partitions is None else num_partitions
        seed = _read(cfg, "seed", 0) if seed is None else seed
    if num_partitions is None:
        raise ValueError("num_partitions=None is not valid; allowed: an integer >= 1 (or a RunConfig)")
    seed = 0 if seed is None else int(seed)
    name = canonical_dataset_name(_read(data_cfg, "name", "digits"))
    resolution = parse_resolution(_read(data_cfg, "resolution", 0) or None)
    samples_per_client = int(_read(data_cfg, "samples_per_client", 0) or 0)
    if samples_per_client and name != "synthetic":
        raise ValueError(
            f"samples_per_client={samples_per_client} is not valid for dataset={name!r}; "
            "allowed: 0 (per-client generation is synthetic only)"
        )
    extra = {"samples_per_client": samples_per_client} if samples_per_client else {}
    dataset = load_dataset(
        name, root=_read(data_cfg, "root", None) or None, download=bool(_read(data_cfg, "download", False)),
        seed=seed, resolution=resolution, **extra,
    )
    classes = str(_read(data_cfg, "classes", "") or "")
    if classes:
        dataset = select_classes(dataset, parse_classes(classes, dataset.num_classes))
    return FederatedData(
        dataset,
        num_partitions=int(num_partitions),
        partitioner=_read(data_cfg, "partitioner", "iid"),
        seed=seed,
        val_fraction=float(_read(data_cfg, "val_fraction", 0.1)),
        cache_size=cache_size,
        **partitioner_options(data_cfg),
    )
