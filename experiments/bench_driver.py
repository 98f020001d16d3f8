"""Benchmark: the server's own time per round, with terminals that reply at once.

On many cores the engine's actors train in parallel, but one process (the driver) receives every
reply, checks and meters it, aggregates, evaluates and builds the next round's messages. Its time
per round is a floor under the round's wall time whatever the number of cores, so with ``P``
actors

    efficiency <= pure_round_s / (P * driver_round_s)

(``efficiency`` as in ``bench_engine.py``: 1.0 when P actors take 1/P of the pure loop's time).
This benchmark measures that floor on any machine: the real ServerApp (fedsplit's metered grid,
update checks, Flower's FedAvg, the server's evaluation, ledger rows) runs against an engine whose
terminals reply at once with updates the real ClientApp computed beforehand (one per terminal,
unpickled afresh for every reply, as Ray hands them over). Nothing trains, so nothing overlaps.

Run::

    python experiments/bench_driver.py                        # mlp100 (~20 s)
    python experiments/bench_driver.py --workloads mlp100,mlp --passes 10
    python experiments/bench_driver.py --smoke                # seconds: tiny settings

It prints one line per workload::

    workload=<name> driver_round_ms=.. per_reply_us=.. pure_round_ms=.. bound_16=.. bound_64=..

``driver_round_ms`` is the best (then the median) driver time of one round, ``per_reply_us`` that
over the replies of a round, ``pure_round_ms`` the plain loop's round (one core), and
``bound_P = pure_round_ms / (P * driver_round_ms)`` the efficiency no engine built on this server
reaches with P actors (a bound from two measurements, not a measurement at P cores).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys

import torch
from bench_engine import COMMON, SMOKE, WORKLOADS, run_pure, terminals_per_round
from flwr.app import Message

from fedsplit.config import RunConfig, load_config
from fedsplit.simulation.engine import SerialEngine


class InstantEngine(SerialEngine):
    """A :class:`SerialEngine` whose terminals reply at once: each reply carries the content the
    real ClientApp gave that terminal for that message type on its first call, unpickled afresh."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - SerialEngine's
        super().__init__(*args, **kwargs)
        self.canned: dict[tuple[int, str], bytes] = {}
        self.app_calls = 0  # messages the real ClientApp ran (the first reply of each terminal and type)

    def _run_in_order(self, messages):  # noqa: ANN001, ANN202 - SerialEngine's
        replies, first = [], []
        for msg in messages:
            key = (msg.metadata.dst_node_id, msg.metadata.message_type)
            if key in self.canned:
                replies.append(Message(pickle.loads(self.canned[key]), reply_to=msg))
            else:
                first.append(len(replies))
                replies.append(None)
        computed = super()._run_in_order([messages[i] for i in first])
        self.app_calls += len(first)
        for i, reply in zip(first, computed):
            if not reply.has_error():
                self.canned[(messages[i].metadata.dst_node_id, messages[i].metadata.message_type)] = pickle.dumps(reply.content)
            replies[i] = reply
        return replies


def driver_rounds(cfg: RunConfig, engine: InstantEngine) -> float:
    """Seconds of one whole run of ``cfg`` against ``engine`` (the driver's time, all rounds)."""
    from fedsplit.simulation.server_app import RunSession, run_server

    session = RunSession.from_config(cfg)
    run_server(engine.grid(), session)
    return session.strategy_wall_s


def bench(name: str, overrides: list[str], passes: int) -> dict[str, float]:
    from fedsplit.clients.app import make_client_app
    from fedsplit.devices import Population, resolve_profiles
    from fedsplit.learning import config_to_json

    torch.set_num_threads(1)
    cfg = load_config(None, COMMON + overrides)
    app = make_client_app(config_json=config_to_json(cfg))
    engine = InstantEngine(app, Population(cfg.devices, resolve_profiles(cfg.profiles)))
    driver_rounds(cfg, engine)  # the first run computes the replies (and warms every cache)
    calls = engine.app_calls
    pure = min(run_pure(cfg)[0] for _ in range(2))
    times = sorted(driver_rounds(cfg, engine) / cfg.rounds for _ in range(passes))
    assert engine.app_calls == calls, "a timed run called the ClientApp: its replies were not all computed beforehand"
    best, median = times[0], statistics.median(times)
    per_round = terminals_per_round(cfg)
    pure_round = pure / cfg.rounds
    line = (
        f"workload={name} driver_round_ms={best * 1e3:.2f} driver_round_median_ms={median * 1e3:.2f} "
        f"per_reply_us={best / per_round * 1e6:.1f} pure_round_ms={pure_round * 1e3:.2f} "
        f"bound_16={pure_round / (16 * best):.3f} bound_64={pure_round / (64 * best):.3f} replies_per_round={per_round}"
    )
    print(line, flush=True)
    return {"driver_round_s": best, "pure_round_s": pure_round}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="mlp100", help=f"comma-separated: {','.join(WORKLOADS)}")
    parser.add_argument("--passes", type=int, default=10, help="timed runs per workload (best and median reported)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, two passes (seconds)")
    args = parser.parse_args(argv)
    from fedsplit.simulation.runner import quiet_flower

    quiet_flower()
    if args.smoke:
        bench("mlp", SMOKE["mlp"], 2)
        return 0
    for name in args.workloads.split(","):
        bench(name, WORKLOADS[name], args.passes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
