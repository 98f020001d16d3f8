"""The data room: datasets, partitioning over clients, and the server's test set.

* :func:`load_dataset` - a dataset by name as a :class:`DataBundle` (clients' pool + server
  test set): ``digits`` (offline default), ``synthetic``, ``mnist``, ``fashion-mnist``,
  ``cifar10`` (local torchvision files; downloaded only with ``download=True``).
* :class:`FederatedData` - ``num_partitions`` client partitions (IID, Dirichlet label skew,
  pathological shards, quantity skew), materialised lazily and LRU-cached, each split into
  local train / validation; a :class:`SyntheticSpec` with ``samples_per_client`` generates each
  client on demand for populations of any size.
* :func:`make_federated_data` - the same from a run / data config.

Importing this package pulls in NumPy and PyTorch only; scikit-learn, torchvision, Hugging Face
``datasets`` and flwr-datasets are imported when first needed.
"""

from fedsplit.data.arrays import ArrayDataset
from fedsplit.data.bundle import DataBundle
from fedsplit.data.datasets import DATASETS, load_dataset
from fedsplit.data.errors import DataError, PartitionError
from fedsplit.data.federated import FederatedData, make_federated_data
from fedsplit.data.partitioners import PARTITIONERS, SIZE_SCHEMES, PartitionOptions
from fedsplit.data.synthetic import SyntheticSpec, SyntheticTask
from fedsplit.data.torchvision_loaders import DataFileError

__all__ = [
    "ArrayDataset",
    "DATASETS",
    "DataBundle",
    "DataError",
    "DataFileError",
    "FederatedData",
    "PARTITIONERS",
    "PartitionError",
    "PartitionOptions",
    "SIZE_SCHEMES",
    "SyntheticSpec",
    "SyntheticTask",
    "load_dataset",
    "make_federated_data",
]
