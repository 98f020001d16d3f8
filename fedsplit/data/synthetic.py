"""A generated, class-conditional image task: learnable, seeded, any size, nothing downloaded.

Each class ``c`` has a mean *latent* image ``mu_c`` on a coarse ``G x G`` grid per channel
(``G = latent_grid``, default 4), drawn once from ``N(0, class_separation^2)`` with the task
seed. A sample of class ``y`` is

    x = upsample_bilinear(mu_y + noise * eps) + pixel_noise * eta,    eps, eta ~ N(0, I)

so the classes are Gaussian blobs in a ``C*G*G``-dimensional latent space seen through a smooth
image. How hard the task is depends on the latent geometry only, not on the resolution: with
the defaults (10 classes, 1 channel, ``G = 4``, separation 1, noise 1) the Bayes accuracy is
about 97 % and a linear model gets well above chance after a few hundred samples.

Random streams are derived with :class:`numpy.random.SeedSequence` from integer tuples, e.g.
``(seed, 0)`` for the class means, ``(seed, 1)`` for the pooled training set,
``(seed, 2)`` for the test set and ``(seed, 3, run_seed, p)`` for client ``p`` in per-client
generation mode. Distinct tuples give independent streams, so client ``p``'s data never
depends on how many clients exist or which others were generated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedsplit.data.arrays import ArrayDataset

#: First entries of the seed tuples of the independent random streams of a task.
STREAM_CLASS_MEANS = 0
STREAM_TRAIN_POOL = 1
STREAM_TEST = 2
STREAM_CLIENT = 3


@dataclass(frozen=True)
class SyntheticSpec:
    """Description of a synthetic task (see the module docstring for the generative model).

    Attributes
    ----------
    num_classes : int
        Number of classes (>= 2).
    channels : int
        Image channels.
    height, width : int
        Image size in pixels.
    num_train : int
        Samples in the pooled training set (used by :func:`fedsplit.data.load_dataset` and
        by :class:`fedsplit.data.FederatedData` when ``samples_per_client`` is ``None``).
    num_test : int
        Samples in the server's test set (labels balanced in expectation).
    samples_per_client : int | None
        Per-client generation mode: client ``p`` gets this many samples (in expectation, with
        quantity skew), generated on demand from a seed derived from ``(seed, p)``. Nothing
        of size O(population) is built. ``None`` = partition the pooled training set instead.
    latent_grid : int
        Side ``G`` of the coarse latent grid (capped at the image size).
    class_separation : float
        Standard deviation of the class-mean latents (larger = easier).
    noise : float
        Standard deviation of the per-sample latent noise (larger = harder).
    pixel_noise : float
        Standard deviation of independent per-pixel noise added after upsampling.
    seed : int
        Seed of the task: class means, the pooled training set and the test set.
    """

    num_classes: int = 10
    channels: int = 1
    height: int = 28
    width: int = 28
    num_train: int = 6000
    num_test: int = 1000
    samples_per_client: int | None = None
    latent_grid: int = 4
    class_separation: float = 1.0
    noise: float = 1.0
    pixel_noise: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        checks = (
            ("num_classes", self.num_classes >= 2, ">= 2"),
            ("channels", self.channels >= 1, ">= 1"),
            ("height", self.height >= 1, ">= 1"),
            ("width", self.width >= 1, ">= 1"),
            ("num_train", self.num_train >= 0, ">= 0"),
            ("num_test", self.num_test >= 0, ">= 0"),
            ("latent_grid", self.latent_grid >= 1, ">= 1"),
            ("class_separation", self.class_separation > 0, "> 0"),
            ("noise", self.noise >= 0, ">= 0"),
            ("pixel_noise", self.pixel_noise >= 0, ">= 0"),
            ("seed", self.seed >= 0, ">= 0"),
        )
        for name, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; allowed: {allowed}")
        if self.samples_per_client is not None and self.samples_per_client < 1:
            raise ValueError(
                f"samples_per_client={self.samples_per_client!r} is not valid; "
                "allowed: >= 1, or None for a pooled training set"
            )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        return self.channels, self.height, self.width


def stream(*key: int) -> np.random.Generator:
    """A NumPy generator seeded from the non-negative integer tuple ``key``."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def bilinear_upsampling_matrix(grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Matrix ``U`` (float32 ``[gh*gw, H*W]``) with ``z.flatten() @ U`` equal to the bilinear
    (``align_corners=False``) resize of a ``gh x gw`` image ``z`` to ``H x W``.

    Resizing is linear, so row ``i`` is the resize of the ``i``-th basis image; one small matmul
    per batch then replaces a call of :func:`torch.nn.functional.interpolate` (much cheaper for
    the many small batches of per-client generation).
    """
    cells = grid[0] * grid[1]
    basis = torch.eye(cells, dtype=torch.float32).reshape(cells, 1, *grid)
    if tuple(grid) != tuple(size):
        basis = F.interpolate(basis, size=size, mode="bilinear", align_corners=False)
    return basis.reshape(cells, size[0] * size[1]).numpy().copy()


class SyntheticTask:
    """Sampler of a :class:`SyntheticSpec`: holds the class means, draws labelled images.

    Parameters
    ----------
    spec : SyntheticSpec
        The task.
    """

    def __init__(self, spec: SyntheticSpec) -> None:
        self.spec = spec
        self._grid = (min(spec.latent_grid, spec.height), min(spec.latent_grid, spec.width))
        means_rng = stream(spec.seed, STREAM_CLASS_MEANS)
        self.class_means = means_rng.normal(
            0.0, spec.class_separation, size=(spec.num_classes, spec.channels, *self._grid)
        ).astype(np.float32)
        self._upsample = bilinear_upsampling_matrix(self._grid, (spec.height, spec.width))

    def images(self, labels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Draw one image per label: float32 ``[len(labels), C, H, W]``."""
        spec = self.spec
        labels = np.asarray(labels, dtype=np.int64)
        count, cells = labels.shape[0], self._grid[0] * self._grid[1]
        eps = rng.standard_normal(size=(count, spec.channels, *self._grid), dtype=np.float32)
        latent = (self.class_means[labels] + spec.noise * eps).reshape(count, spec.channels, cells)
        pixels = latent @ self._upsample  # [count, C, H*W]; bilinear upsampling is linear
        if spec.pixel_noise > 0:
            pixels += spec.pixel_noise * rng.standard_normal(size=pixels.shape, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(pixels.reshape(count, spec.channels, spec.height, spec.width)))

    def sample(self, labels: np.ndarray, rng: np.random.Generator) -> ArrayDataset:
        """Labelled images for the given labels, drawn from ``rng``."""
        labels = np.asarray(labels, dtype=np.int64)
        return ArrayDataset(self.images(labels, rng), labels)

    def balanced(self, num_samples: int, rng: np.random.Generator) -> ArrayDataset:
        """``num_samples`` images with labels drawn uniformly over the classes."""
        labels = rng.integers(0, self.spec.num_classes, size=num_samples)
        return self.sample(labels, rng)

    def train_pool(self) -> ArrayDataset:
        """The pooled training set (``spec.num_train`` samples), same for the same spec."""
        return self.balanced(self.spec.num_train, stream(self.spec.seed, STREAM_TRAIN_POOL))

    def test_set(self) -> ArrayDataset:
        """The server's test set (``spec.num_test`` samples), same for the same spec."""
        return self.balanced(self.spec.num_test, stream(self.spec.seed, STREAM_TEST))
