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


def parse_classes(text: str, num_classes: int) -> tuple[int, ...]:
    """The class labels named by ``data.classes``: ``"5-9"``, ``"0,2,4"`` or a mix (``"0-2,7"``).

    Returns an empty tuple for an empty string (all classes).

    Raises
    ------
    ValueError
        For a malformed list, a label outside ``0 .. num_classes - 1``, a repeated label, or
        fewer than two classes.
    """
    text = text.strip()
    if not text:
        return ()
    labels: list[int] = []
    for item in text.split(","):
        item = item.strip()
        lo, sep, hi = item.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ValueError(f"{text!r}: expected labels and ranges like '5-9' or '0,2,4', got {item!r}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ValueError(f"{text!r}: range {item!r} runs backwards")
        labels.extend(range(first, last + 1))
    bad = [c for c in labels if c >= num_classes]
    if bad:
        raise ValueError(f"{text!r}: label {bad[0]} is outside 0..{num_classes - 1}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"{text!r}: a label is named twice")
    if len(labels) < 2:
        raise ValueError(f"{text!r}: a task needs at least two classes")
    return tuple(labels)


def select_classes(bundle: DataBundle, classes: tuple[int, ...]) -> DataBundle:
    """The samples of ``bundle`` whose label is in ``classes``, relabelled ``classes[i] -> i``.

    Used to carve a source and a target task out of one dataset (pretrain on digits 0-4,
    fine-tune on 5-9). Not for per-client generated synthetic data (there is no pool to filter).
    """
    if not classes:
        return bundle
    if bundle.generated_per_client:
        raise ValueError("data.classes cannot filter per-client generated synthetic data (samples_per_client > 0)")
    import torch

    mapping = torch.full((bundle.num_classes,), -1, dtype=torch.long)
    mapping[list(classes)] = torch.arange(len(classes))

    def keep(ds: ArrayDataset) -> ArrayDataset:
        new = mapping[ds.y]
        mask = new >= 0
        return ArrayDataset(ds.x[mask], new[mask])

    return DataBundle(keep(bundle.train), keep(bundle.test), len(classes), bundle.input_shape, bundle.name, bundle.synthetic)
