"""In-memory image arrays: the dataset type every loader returns, and the image transforms.

Everything the data room hands out is an :class:`ArrayDataset` (a float32 image tensor
``[N, C, H, W]`` plus an int64 label tensor ``[N]``), so that clients, models and the server
all see one shape convention whatever the source of the data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

#: Images resized per call of :func:`torch.nn.functional.interpolate` (bounds peak memory).
_RESIZE_CHUNK = 4096


class ArrayDataset(Dataset):
    """Images and labels held in memory as tensors.

    Parameters
    ----------
    x : torch.Tensor | numpy.ndarray
        Images, shape ``[N, C, H, W]``; converted to float32.
    y : torch.Tensor | numpy.ndarray
        Class labels, shape ``[N]``; converted to int64.

    Notes
    -----
    ``dataset[i]`` returns ``(x[i], y[i])`` (a ``[C, H, W]`` float tensor and a 0-d int64
    tensor), which is what :class:`torch.utils.data.DataLoader` batches into ``(x, y)``.
    An empty dataset (``N == 0``) is valid and keeps the image shape.
    """

    def __init__(self, x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> None:
        x_tensor = torch.as_tensor(x, dtype=torch.float32)
        y_tensor = torch.as_tensor(y, dtype=torch.int64)
        if x_tensor.ndim != 4:
            raise ValueError(f"x has shape {tuple(x_tensor.shape)}; expected [N, C, H, W]")
        if y_tensor.ndim != 1 or y_tensor.shape[0] != x_tensor.shape[0]:
            raise ValueError(
                f"y has shape {tuple(y_tensor.shape)}; expected [N] with N={x_tensor.shape[0]}"
            )
        self.x = x_tensor
        self.y = y_tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of one image."""
        channels, height, width = self.x.shape[1:]
        return int(channels), int(height), int(width)

    def subset(self, indices: np.ndarray | Sequence[int]) -> ArrayDataset:
        """A new dataset holding copies of the rows at ``indices`` (in that order)."""
        index = torch.from_numpy(np.array(indices, dtype=np.int64, copy=True).reshape(-1))
        # index_select: same result as x[index], far less per-call overhead for small batches
        return ArrayDataset(torch.index_select(self.x, 0, index), torch.index_select(self.y, 0, index))

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, input_shape={self.input_shape})"


def parse_resolution(resolution: int | Sequence[int] | None) -> tuple[int, int] | None:
    """Turn ``resolution`` (``None``/``0`` = native, ``R`` = ``R x R``, ``(H, W)``) into ``(H, W)``.

    Raises
    ------
    ValueError
        If a side is not a positive integer.
    """
    if resolution is None:
        return None
    if isinstance(resolution, (int, np.integer)):
        if resolution == 0:
            return None
        sides = (int(resolution), int(resolution))
    else:
        sides = tuple(int(side) for side in resolution)
        if len(sides) != 2:
            raise ValueError(f"resolution={resolution!r} is not valid; allowed: an int R or (H, W)")
    if min(sides) < 1:
        raise ValueError(f"resolution={resolution!r} is not valid; allowed: positive pixel sizes")
    return sides[0], sides[1]


def to_float_images(pixels: np.ndarray | torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
    """Convert raw pixels to float32 ``[N, C, H, W]`` scaled to ``[0, 1]``.

    Parameters
    ----------
    pixels : numpy.ndarray | torch.Tensor
        ``[N, H, W]`` (grey), or ``[N, H, W, C]`` (channels last, e.g. CIFAR), values in
        ``[0, max_value]``.
    max_value : float
        Pixel value that maps to 1.0 (255 for 8-bit images, 16 for scikit-learn digits).
    """
    images = torch.as_tensor(np.asarray(pixels)).to(torch.float32) / float(max_value)
    if images.ndim == 3:
        return images.unsqueeze(1).contiguous()
    if images.ndim == 4:
        return images.permute(0, 3, 1, 2).contiguous()
    raise ValueError(f"pixels have shape {tuple(images.shape)}; expected [N, H, W] or [N, H, W, C]")


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images to ``size = (H', W')`` pixels by bilinear interpolation.

    Uses ``align_corners=False``; when shrinking a side, antialiasing is switched on so that
    the result is an area-weighted average rather than a subsampling. Works in chunks so the
    peak extra memory is bounded by one chunk.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    out = torch.empty((images.shape[0], images.shape[1], *size), dtype=torch.float32)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].to(torch.float32)
        out[start : start + _RESIZE_CHUNK] = F.interpolate(
            chunk, size=size, mode="bilinear", align_corners=False, antialias=shrinking
        )
    return out


def normalize_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Standardise ``[N, C, H, W]`` images per channel: ``(x - mean[c]) / std[c]`` (in place)."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    if mean_t.shape[1] not in (1, images.shape[1]):
        raise ValueError(f"mean has {mean_t.shape[1]} channels; images have {images.shape[1]}")
    return images.sub_(mean_t).div_(std_t)


def finish_images(
    images: np.ndarray | torch.Tensor,
    *,
    max_value: float,
    resolution: tuple[int, int] | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> torch.Tensor:
    """Raw pixels -> float ``[N, C, H, W]`` in ``[0, 1]`` -> resized -> standardised.

    The one path every loader's pixels take (:func:`to_float_images`, then
    :func:`resize_images` if ``resolution`` is given, then :func:`normalize_images` if ``mean``
    and ``std`` are given).
    """
    x = to_float_images(images, max_value=max_value)
    if resolution is not None:
        x = resize_images(x, resolution)
    if mean is not None and std is not None:
        x = normalize_images(x, mean, std)
    return x
