"""This host's compute rate, calibrated once per process: CPU seconds turned into FLOPs.

Used where work cannot be counted by ``FlopCounterMode`` (cryptography, non-torch code): the ClientApp
mod's ``timed`` metering (:mod:`fedsplit.clients.flop_meter`) and the server's secure-aggregation work.
Plain NumPy, no Flower, so both the terminal and the server side of the glue read it from the core.
"""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext

import numpy as np

CALIBRATION_N = 512
"""Calibration: ``CALIBRATION_REPEATS`` float32 ``(N, N) @ (N, N)`` matmuls (``2 N^3`` FLOPs each)."""
CALIBRATION_REPEATS = 4
CALIBRATION_TRIALS = 3


@functools.cache
def host_flops_per_cpu_s() -> float:
    """This host's calibrated compute rate, FLOPs per CPU second (one core), cached per process.

    Best of :data:`CALIBRATION_TRIALS` timings of :data:`CALIBRATION_REPEATS` float32 matmuls of
    :data:`CALIBRATION_N` x :data:`CALIBRATION_N` matrices with numpy on one BLAS thread (numpy, so
    that an enclosing FlopCounterMode neither counts nor slows it). Takes ~0.1 s once.

    Returns
    -------
    float
        FLOP/s per CPU second.
    """
    rng = np.random.default_rng(0)
    a = rng.standard_normal((CALIBRATION_N, CALIBRATION_N), dtype=np.float32)
    b = rng.standard_normal((CALIBRATION_N, CALIBRATION_N), dtype=np.float32)
    flops = 2 * CALIBRATION_N**3 * CALIBRATION_REPEATS
    with _one_blas_thread():
        np.matmul(a, b)  # warm-up: BLAS initialisation is not the host's speed
        best = float("inf")
        for _ in range(CALIBRATION_TRIALS):
            start = time.process_time()
            for _ in range(CALIBRATION_REPEATS):
                np.matmul(a, b)
            best = min(best, time.process_time() - start)
    return flops / max(best, 1e-9)


def _one_blas_thread():  # noqa: ANN202 - a context manager
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def timed_flops(cpu_s: float) -> int:
    """FLOPs that ``cpu_s`` CPU seconds stand for on this host (:func:`host_flops_per_cpu_s`)."""
    return int(round(cpu_s * host_flops_per_cpu_s()))


__all__ = ["CALIBRATION_N", "CALIBRATION_REPEATS", "CALIBRATION_TRIALS", "host_flops_per_cpu_s", "timed_flops"]
