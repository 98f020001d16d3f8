"""The process environment fedsplit sets before Ray starts (light: importing it starts nothing).

``fedsplit`` calls :func:`quiet_ray` before any command that may start Ray; it lives apart from
:mod:`fedsplit.simulation.runner`, which imports torch, Flower and Ray, so that a command that
fails on its arguments or configuration says so at once.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["RAY_ACCEL_TIP", "quiet_ray"]

#: Ray's FutureWarning at ``ray.init``: a tip about a future default, not about this run.
RAY_ACCEL_TIP = r"Tip: In future versions of Ray, Ray will no longer override accelerator"


def quiet_ray() -> None:
    """Pin the GPU visibility fedsplit relies on, and drop Ray's tip about its future default.

    A Ray actor with ``num_gpus=0`` gets ``CUDA_VISIBLE_DEVICES=""`` (Ray's default,
    ``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1``), so a CPU-budget device class trains on the CPU
    even on a GPU machine, as its profile says. ``ray.init`` warns that a future Ray will stop
    doing this unless told; the variable is set here (unless the user set it) so that it keeps
    doing it, and the warning, which then says nothing true about the run, is filtered. Call
    before Ray starts (either engine).
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "1")
    warnings.filterwarnings("ignore", message=RAY_ACCEL_TIP, category=FutureWarning)
