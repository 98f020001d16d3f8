"""Compute metering for any ClientApp: exact FLOP counts, with a timed fallback.

A terminal's compute goes into the ledger whether or not its ClientApp reports it. Where it is
measured:

- fedsplit's engine (:class:`fedsplit.simulation.engine.RayEngine`, also under ``fedsplit
  run-app``): the actor runs every message through :func:`metered_call` unless the ClientApp says
  it reports its own FLOPs (``app.reports_flops = True``, as fedsplit's own ClientApp does); the
  measurement travels back beside the reply, never inside it, and
  :class:`~fedsplit.simulation.metered_grid.MeteredGrid` reads it from
  ``EngineGrid.measured_compute``;
- Flower's simulation engine and deployed ClientApps: install :func:`flop_meter_mod`
  (``ClientApp(mods=[flop_meter_mod])``). When the reply has no ``"flops"`` in its ``"metrics"``
  record, the mod adds a :class:`~flwr.app.MetricRecord` under :data:`METER_KEY`
  (``"fedsplit.meter"``) with ``flops`` (int, FLOPs) and ``method`` (int code, see
  :data:`METHOD_CODES`); MeteredGrid reads it. Under fedsplit's engine hook the mod steps aside
  (the engine already measures), so nothing is counted or sent twice.

Precedence in the ledger (``LedgerRow.flops_method``): ``reported`` (the app's own ``"flops"``
metric) > ``counted``/``timed`` from the engine > the mod's record > ``none``.

How a call is measured
----------------------
The call runs under :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the FLOPs of
the torch operators it has formulas for (matmuls, convolutions, attention, and their backward;
multiply and add counted separately, as :mod:`fedsplit.models.flops` counts them): method
``counted``. The meter keeps FlopCounterMode's totals but skips its per-module attribution and
takes a fast path for operators without a decomposition (``_FastFlopCounterMode`` below), which
makes counting about 3x cheaper on small models. A generic ClientApp's work depends on its own data and control flow, not on the
message, so its count cannot be cached per input shape: every call is counted (apps that want to
avoid the counter's cost report ``"flops"`` themselves, as fedsplit's does from cached per-shape
counts). If the counter saw no FLOPs but the call used at least :data:`MIN_TIMED_CPU_S` CPU
seconds (numpy, custom kernels, anything the counter does not know), the FLOPs are the call's
process CPU seconds times :func:`host_flops_per_cpu_s`, the host's calibrated single-core rate:
method ``timed``. Below that threshold the call did no measurable compute: ``counted`` with 0.
Work in other processes (DataLoader workers) is not seen by either method.

Overhead
--------
bench_engine's workloads and its ``overhead`` ratio (fedsplit's engine with one 1-CPU actor over
the plain PyTorch loop; committed reference on a quiet host: MLP 1.126, CNN 1.071), measured on
the 2-core development host while other jobs ran (load 5-18), so with the engine before this
change, ``auto`` and ``always`` interleaved pass by pass in the same process (best of 2, two
runs). fedsplit's ClientApp reports its FLOPs, so under ``auto`` the hook is skipped and costs
nothing measurable: MLP 1.055 and 1.316 against 1.149 and 1.337 before, CNN 0.921 and 0.805
against 1.058 and 0.884 (``bench_engine.py --passes 1`` alone, load ~15: MLP 1.556, CNN 0.983,
not comparable with the quiet reference). With the hook forced on (``FEDSPLIT_METER=always``,
the cost a third-party app pays): MLP 4.87 against 1.32 (each of a step's ~60 tiny operators
pays a Python dispatch; 14.2 with plain FlopCounterMode), CNN 0.944 against 0.805 (+17%; +10%
in the first run, with plain FlopCounterMode). Simulated seconds come from the FLOPs, so this
is real time only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

import torch
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

from fedsplit.host_rate import host_flops_per_cpu_s, timed_flops
from fedsplit.records import record_of

__all__ = [
    "METER_KEY",
    "METHOD_CODES",
    "MIN_TIMED_CPU_S",
    "Measurement",
    "flop_meter_mod",
    "host_flops_per_cpu_s",
    "measure",
    "metered_call",
    "method_of_code",
    "read_meter_record",
    "reports_flops",
]

T = TypeVar("T")

METER_KEY = "fedsplit.meter"
"""Key of the mod's :class:`~flwr.app.MetricRecord` in a reply's content."""

METHOD_CODES: dict[str, int] = {"none": 0, "counted": 1, "timed": 2}
"""``method`` codes of the mod's record (MetricRecord values are numbers)."""

MIN_TIMED_CPU_S = 0.005
"""CPU seconds a call must use, with no FLOPs counted, to be metered by time (``timed``)."""


_ACTIVE: ContextVar[bool] = ContextVar("fedsplit_flop_meter_active", default=False)


# --- a faster FlopCounterMode with the same totals ---------------------------------------------------
# FlopCounterMode attributes FLOPs to modules (global module hooks, a multi-grad hook per module
# call) and, for every operator, tries a CompositeImplicitAutograd decomposition before running
# it. The meter needs totals only, and most operators have no such decomposition: for those the
# result of that attempt is known in advance. _FastFlopCounterMode runs them and counts their
# FLOPs with FlopCounterMode's own formulas directly; every other operator (higher-order ops,
# decomposable ops, size/stride queries) goes through FlopCounterMode's own dispatch. Totals are
# FlopCounterMode's, about 3x cheaper on small models (one thread, SGD steps of a 64-64-10 MLP on
# 10 samples: 13x -> 3.9x the uncounted step; of a FedAvg CNN on 10 28x28 images: 1.56x -> 1.12x;
# tests/test_compute_metering.py checks the totals are equal).
_DELEGATE = object()  # route of an operator that FlopCounterMode's own dispatch handles
_UNSEEN = object()
_QUERIES = frozenset(
    "sym_is_contiguous is_contiguous is_strides_like_format is_non_overlapping_and_dense size sym_size "
    "stride sym_stride storage_offset sym_storage_offset numel sym_numel dim layout device".split()
)
_ROUTES: dict = {}  # OpOverload -> FLOP formula, None (no FLOPs), or _DELEGATE


class _TotalsOnly:
    """Stands in for FlopCounterMode's ModuleTracker: every FLOP goes to ``"Global"``, no hooks."""

    parents = ("Global",)

    def __enter__(self) -> "_TotalsOnly":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _route(func: object) -> object:
    """How :class:`_FastFlopCounterMode` handles ``func`` (cached per operator)."""
    if not isinstance(func, torch._ops.OpOverload) or func._overloadpacket.__name__ in _QUERIES:
        return _DELEGATE
    cia = torch._C.DispatchKey.CompositeImplicitAutograd
    if cia in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), cia):
        return _DELEGATE  # FlopCounterMode runs its decomposition
    return flop_counter.flop_registry.get(func._overloadpacket)


_FastBase = getattr(flop_counter, "_FlopCounterMode", None)


if _FastBase is not None:

    class _FastFlopCounterMode(_FastBase):  # type: ignore[misc, valid-type]
        """FlopCounterMode's dispatch with a fast path for operators without a decomposition."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            route = _ROUTES.get(func, _UNSEEN)
            if route is _UNSEEN:
                route = _ROUTES[func] = _route(func)
            if route is _DELEGATE:
                return super().__torch_dispatch__(func, types, args, kwargs)
            kwargs = kwargs if kwargs else {}
            out = func(*args, **kwargs)
            if route is not None:
                self.counter.flop_counts["Global"][func._overloadpacket] += route(*args, **kwargs, out_val=out)
            return out


class _Counter:
    """Total FLOPs of what runs inside, as FlopCounterMode counts them (see above)."""

    def __init__(self) -> None:
        self.counter = FlopCounterMode(display=False)
        fast = _FastBase is not None and hasattr(self.counter, "mod_tracker") and hasattr(self.counter, "flop_counts")
        if fast:
            self.counter.mod_tracker = _TotalsOnly()
        self.mode = _FastFlopCounterMode(self.counter) if fast else None

    def __enter__(self) -> "_Counter":
        if self.mode is None:
            self.counter.__enter__()
        else:
            self.counter.flop_counts.clear()
            self.mode.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mode is None:
            self.counter.__exit__(*exc)
        else:
            self.mode.__exit__(*exc)

    def total(self) -> int:
        """FLOPs counted so far."""
        return int(self.counter.get_total_flops())


@dataclass(frozen=True)
class Measurement:
    """The compute of one metered call.

    Attributes
    ----------
    flops : int
        Floating-point operations (multiply and add counted separately).
    method : str
        ``counted`` (FlopCounterMode) or ``timed`` (CPU seconds x host FLOP/s).
    cpu_s : float
        Process CPU seconds the call used (all threads), seconds.
    wall_s : float
        Wall-clock seconds of the call, seconds.
    """

    flops: int
    method: str
    cpu_s: float
    wall_s: float




def measure(fn: Callable[[], T]) -> tuple[T, Measurement]:
    """Run ``fn()`` under FlopCounterMode and time it; the result and its :class:`Measurement`.

    An exception from ``fn`` propagates (nothing is measured). While ``fn`` runs,
    :func:`flop_meter_mod` inside it passes messages through untouched.
    """
    counter = _Counter()
    token = _ACTIVE.set(True)
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        with counter:
            result = fn()
        cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        _ACTIVE.reset(token)
    flops = counter.total()
    if flops == 0 and cpu_s >= MIN_TIMED_CPU_S:
        return result, Measurement(timed_flops(cpu_s), "timed", cpu_s, wall_s)
    return result, Measurement(flops, "counted", cpu_s, wall_s)


def metered_call(fn: ClientAppCallable, msg: Message, ctx: Context) -> tuple[Message, int, str]:
    """Run a ClientApp (or any ``(msg, ctx) -> Message`` callable) and meter its compute.

    Parameters
    ----------
    fn : callable
        The ClientApp, or a handler.
    msg : Message
        The message to handle.
    ctx : Context
        The node's context.

    Returns
    -------
    tuple
        ``(reply, flops, method)``: the reply exactly as ``fn`` returned it, FLOPs, and
        ``"counted"`` or ``"timed"``.
    """
    reply, m = measure(lambda: fn(msg, ctx))
    return reply, m.flops, m.method


def reports_flops(content: RecordDict) -> bool:
    """Whether a reply's content carries the app's own ``"flops"`` in its ``"metrics"`` record."""
    metrics = record_of(content, "metrics", MetricRecord)
    return metrics is not None and "flops" in metrics


def method_of_code(code: float) -> str:
    """The method name of a :data:`METHOD_CODES` code (unknown codes read as ``none``)."""
    for name, value in METHOD_CODES.items():
        if value == int(code):
            return name
    return "none"


def read_meter_record(content: RecordDict) -> tuple[int, str] | None:
    """``(flops, method)`` from the mod's record in a reply's content, or None if it has none."""
    record = record_of(content, METER_KEY, MetricRecord)
    if record is None or "flops" not in record:
        return None
    return int(record["flops"]), method_of_code(record.get("method", 0))


def flop_meter_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: meter the app's compute and add it to the reply when the app reports none.

    Adds ``MetricRecord({"flops": int, "method": code})`` under :data:`METER_KEY` to a reply
    without an error and without ``"flops"`` in its ``"metrics"`` record (the content is replaced
    by a shallow copy, so records shared with other messages are not modified). Replies that
    report their own FLOPs, and error replies, pass through unchanged. Inside fedsplit's engine
    hook (:func:`metered_call`) the mod only calls the app: the engine measures already.
    """
    if _ACTIVE.get():
        return call_next(msg, ctx)
    reply, m = measure(lambda: call_next(msg, ctx))
    if reply.has_error() or not reply.has_content() or reports_flops(reply.content):
        return reply
    content = RecordDict(dict(reply.content.items()))
    content[METER_KEY] = MetricRecord({"flops": m.flops, "method": METHOD_CODES[m.method]})
    reply.content = content
    return reply
