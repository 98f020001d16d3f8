"""A terminal that measures itself: the FLOP/s probe and the real seconds of every message.

A SuperNode started with ``profile = "measure"`` in its node config (``fedsplit deploy supernode
--measure-profile``) runs :func:`fedsplit.devices.probe.probe_flops_per_s` on the ClientApp's first
message of a run and keeps the result in ``Context.state`` (record :data:`PROBE_STATE`), so the
later messages of the run, each in a fresh ``flwr-clientapp`` process, reuse it. Every reply then
carries a :class:`~flwr.app.MetricRecord` under :data:`MEASURED_KEY`:

- ``flops-per-s``: the probe's rate (FLOP/s);
- ``compute-s``: wall-clock seconds the ClientApp took to handle this message (the handler and
  the mods inside this one: training, encoding), seconds;
- ``probe-s``: seconds the probe took (only in the reply of the message that ran it).

:class:`fedsplit.simulation.metered_grid.MeteredGrid` reads it: the terminal's modelled costs use
the measured rate (:func:`fedsplit.devices.probe.measured_profile`) and the ledger gets
``measured_compute_s`` and ``measured_comm_s`` next to the modelled ``compute_s`` and ``comm_s``.
Without the node config entry (every simulation, and deployed nodes that declare their profile)
the mod only calls the app: replies, and their bytes, are unchanged.
"""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedsplit.devices.probe import probe_flops_per_s
from fedsplit.records import record_of

#: Node config key and the value that turns measuring on.
PROFILE_KEY = "profile"
MEASURE = "measure"
#: Reply record with the measurements.
MEASURED_KEY = "fedsplit.measured"
#: ``Context.state`` record with the probe's result.
PROBE_STATE = "fedsplit.profile.probe"


def measures(context: Context) -> bool:
    """Whether this node was asked to measure itself (node config ``profile = "measure"``)."""
    value = context.node_config.get(PROFILE_KEY)
    if value is None or value == "declared":
        return False
    if value != MEASURE:
        raise ValueError(f'node config {PROFILE_KEY} = "{value}": expected "{MEASURE}" or "declared"')
    return True


def cached_probe(context: Context) -> tuple[float, float | None]:
    """``(flops_per_s, probe_s)``: the probe kept in ``Context.state``, or a fresh one (then kept).

    ``probe_s`` is the seconds the probe took when it ran now, None when it came from the state.
    """
    record = context.state.config_records.get(PROBE_STATE)
    if record is not None:
        return float(record["flops-per-s"]), None
    from fedsplit.clients.app import _device

    probe = probe_flops_per_s(device=_device())
    context.state.config_records[PROBE_STATE] = ConfigRecord(
        {"flops-per-s": probe.flops_per_s, "probe-s": probe.seconds, "products": probe.products, "n": probe.n, "threads": probe.threads}
    )
    return probe.flops_per_s, probe.seconds


def measure_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: probe on the first message, time every message, report both (see module doc)."""
    if not measures(context):
        return call_next(msg, context)
    flops_per_s, probe_s = cached_probe(context)
    started = time.perf_counter()
    reply = call_next(msg, context)
    compute_s = time.perf_counter() - started
    if reply.has_error() or not reply.has_content():
        return reply
    record = MetricRecord({"flops-per-s": flops_per_s, "compute-s": compute_s})
    if probe_s is not None:
        record["probe-s"] = probe_s
    content = RecordDict(dict(reply.content.items()))  # a shallow copy: records may be shared
    content[MEASURED_KEY] = record
    reply.content = content
    return reply


def read_measured(content: RecordDict) -> tuple[float, float] | None:
    """``(flops_per_s, compute_s)`` from a reply's :data:`MEASURED_KEY` record, None without one."""
    record = record_of(content, MEASURED_KEY, MetricRecord)
    if record is None:
        return None
    return float(record["flops-per-s"]), float(record["compute-s"])


__all__ = ["MEASURE", "MEASURED_KEY", "PROBE_STATE", "PROFILE_KEY", "cached_probe", "measure_mod", "measures", "read_measured"]
