"""A model family with a size knob: one architecture indexed by input resolution and width.

A member is ``(architecture, resolution, width)``: the terminal resizes its input to
``resolution x resolution`` pixels (``data.resolution``) and the network's channel counts are
scaled by ``width`` (``model.width``). Both knobs move accuracy and FLOPs the same way, so the
members of a family sort from small (cheap, less accurate) to large; every member is a complete
``fedsplit simulate`` configuration, trained through the federated pipeline like any other run.

The default family for ``digits`` (:data:`DIGITS_FAMILY`) and why it is that one
------------------------------------------------------------------------------
Measured on digits with ``experiments/configs/digits_fedavg.toml`` (10 terminals, FedAvg, 2 local
epochs of SGD, lr 0.05, momentum 0.9), held-out accuracy (360 images) of the compact residual
CNN, seeds 0 and 1:

* 4 rounds: capacity shows but the last round is noisy: 8 px at width 0.25 / 0.5 / 1 / 2 gave
  0.83 / 0.91 / 0.95 / 0.96 (seed 0) and 0.76 / 0.95 / 0.89 / 0.96 (seed 1): no order;
* 10 rounds: every member of 5-8 px x width 0.25-2 lands at 0.86-0.96, neighbours within 1-3
  images (a 6 px member below a 5 px one);
* 15 rounds (the budget of ``experiments/configs/pipeline.toml``): 5 px x 0.125, then 8 px x
  0.125 / 0.25 / 0.5 / 1 / 2 gave 0.897, 0.911 / 0.936 / 0.964 / 0.981 / 0.986 (seed 0) and
  0.833, 0.861 / 0.939 / 0.964 / 0.956 / 0.944 (seed 1): width 0.5 and above saturates
  (0.94-0.99, no order between seeds) while the steps 5 px -> 8 px at width 0.125, 0.125 -> 0.25
  and 0.25 -> 1 hold on both seeds (1.4-7.8 pp);
* resolutions of 4 px and less: the last stage sees 1x1 maps and the network does not train
  well under FedAvg (0.14-0.51 at 2-4 px, width 0.25, 10 rounds: BatchNorm statistics of one
  value per channel), so they are no useful small member.

So the default family is 5 px x 0.125, 8 px (native) x 0.125, x 0.25 and x 1: four members
whose accuracy and FLOPs (29 k, 59 k, 99 k, 1.5 M per inference, growing as
``resolution**2 * width**2`` above the 4-channel floor) both increase, at 15 rounds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

#: Architectures of the zoo that have a width multiplier (``model.width``).
FAMILY_ARCHITECTURES: tuple[str, ...] = ("cnn", "mobilenet")

#: ``(resolution [pixels per side], width multiplier)`` of the default digits family, small to large.
DIGITS_FAMILY: tuple[tuple[int, float], ...] = ((5, 0.125), (8, 0.125), (8, 0.25), (8, 1.0))


def member_name(architecture: str, resolution: int, width: float) -> str:
    """The catalog name of a member, e.g. ``cnn-8px-w0.5`` (``resolution`` 0: ``native``)."""
    side = f"{resolution}px" if resolution else "native"
    return f"{architecture}-{side}-w{width:g}"


@dataclass(frozen=True)
class FamilyMember:
    """One member of a family.

    Parameters
    ----------
    name : str
        Unique name (catalog entry and run folder name).
    architecture : str
        Zoo model name with a width multiplier (:data:`FAMILY_ARCHITECTURES`).
    resolution : int
        Input side [pixels] the terminal resizes to; 0 keeps the dataset's native size.
    width : float
        Width multiplier of the channel counts (> 0).
    """

    name: str
    architecture: str
    resolution: int
    width: float

    def __post_init__(self) -> None:
        if self.architecture not in FAMILY_ARCHITECTURES:
            raise ValueError(
                f"family member {self.name!r}: architecture {self.architecture!r} has no width knob "
                f"(allowed: {', '.join(FAMILY_ARCHITECTURES)})"
            )
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 0:
            raise ValueError(f"family member {self.name!r}: resolution = {self.resolution!r}: must be an integer >= 0")
        if isinstance(self.width, bool) or not isinstance(self.width, (int, float)) or not self.width > 0:
            raise ValueError(f"family member {self.name!r}: width = {self.width!r}: must be a number > 0")

    def overrides(self) -> dict[str, Any]:
        """The configuration tree that makes a base ``fedsplit simulate`` config train this member."""
        return {
            "run_name": self.name,
            "data": {"resolution": self.resolution},
            "model": {"name": self.architecture, "width": float(self.width)},
        }


def family(architecture: str, sizes: Sequence[tuple[int, float]]) -> list[FamilyMember]:
    """Members of ``architecture`` at each ``(resolution, width)``, named by :func:`member_name`.

    Raises
    ------
    ValueError
        For an architecture without a width knob, a bad size, or two equal sizes.
    """
    members = [FamilyMember(member_name(architecture, int(r), float(w)), architecture, int(r), float(w)) for r, w in sizes]
    names = [m.name for m in members]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"family: size {name!r} appears twice")
    if not members:
        raise ValueError("family: no members")
    return members


def merge_tree(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied recursively (tables merged, other values replaced); copies."""
    out: dict[str, Any] = {k: (merge_tree(v, {}) if isinstance(v, Mapping) else v) for k, v in base.items()}
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tree(out[key], value)
        elif isinstance(value, Mapping):
            out[key] = merge_tree(value, {})
        else:
            out[key] = value
    return out


def separation(entries: Sequence[Mapping[str, Any]]) -> list[str]:
    """Where a family fails to separate: pairs ordered by FLOPs whose accuracy does not increase.

    Parameters
    ----------
    entries : sequence of mapping
        Catalog entries (``name``, ``flops``, ``accuracy``) of the trained members.

    Returns
    -------
    list of str
        One line per adjacent pair (sorted by FLOPs) where FLOPs or accuracy fail to increase
        strictly; empty when the family separates.
    """
    ordered = sorted(entries, key=lambda e: (e["flops"], e["accuracy"]))
    problems = []
    for small, large in pairwise(ordered):
        if not (large["flops"] > small["flops"] and large["accuracy"] > small["accuracy"]):
            problems.append(
                f"{small['name']} (flops={small['flops']}, accuracy={small['accuracy']:.4f}) -> "
                f"{large['name']} (flops={large['flops']}, accuracy={large['accuracy']:.4f})"
            )
    return problems


__all__ = ["DIGITS_FAMILY", "FAMILY_ARCHITECTURES", "FamilyMember", "family", "member_name", "merge_tree", "separation"]
