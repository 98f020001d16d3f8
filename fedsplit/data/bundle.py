"""What a dataset loader returns: the clients' pool, the server's test set and their description.

:class:`DataBundle` sits above :mod:`fedsplit.data.arrays` (its datasets) and
:mod:`fedsplit.data.synthetic` (the task it may describe), so neither of those needs to know
about bundles and the data room's imports run one way.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedsplit.data.arrays import ArrayDataset
from fedsplit.data.synthetic import SyntheticSpec


@dataclass(frozen=True)
class DataBundle:
    """A dataset ready for federation: the pool clients are drawn from and the server's test set.

    Attributes
    ----------
    train : ArrayDataset
        The pool partitioned over clients (each client splits its share into train/val).
    test : ArrayDataset
        Held-out test set, kept on the server and never given to a client.
    num_classes : int
        Number of classes; labels are ``0 .. num_classes - 1``.
    input_shape : tuple[int, int, int]
        Shape ``(C, H, W)`` of one image after any resize.
    name : str
        Dataset name, one of :data:`fedsplit.data.DATASETS`.
    synthetic : SyntheticSpec | None
        For ``synthetic`` only, the task description. When its ``samples_per_client`` is set
        the bundle describes per-client generation: there is no shared pool (``train`` is
        empty) and :class:`fedsplit.data.FederatedData` generates each client on demand.
    """

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    synthetic: SyntheticSpec | None = None

    @property
    def generated_per_client(self) -> bool:
        """True when clients' data is generated on demand rather than drawn from ``train``."""
        return self.synthetic is not None and self.synthetic.samples_per_client is not None
