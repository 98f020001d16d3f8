"""Benchmark (issue #16 item 3): FedBuff at scale, wall time per 1,000 aggregated updates.

10,000 terminals (2,000 of each of five device classes), ``--concurrency`` (100) in flight,
FedBuff with K = ``--buffer`` (10), the MLP on synthetic data (``--samples`` per terminal), no
evaluation. The run goes through the whole server path (``run_server``: the metered grid, the
ledger, the server loop, the event queue) on ``--engine``:

- ``fedsplit`` (default): fedsplit's Ray engine, the real ClientApp on Ray actors (one pool per
  device budget); each aggregation's K refills go out in one batch, run in parallel;
- ``serial``: the same engine without Ray, every message in this process one after another.

It prints::

    engine=<e> terminals=<N> in_flight=<C> K=<K> updates=<U> wall_s=<t> startup_s=<s> rounds_wall_s=<r>
        wall_s_per_1000_updates=<t'> steady_wall_s_per_1000_updates=<t''> sim_s=<s> events_sorted=<bool>

``wall_s`` is the whole run (engine start included), ``startup_s`` the part outside the rounds
(Ray, actors, the terminals' discovery, shutdown), ``rounds_wall_s`` the sum of the rounds' wall time (the
ledger's ``wall_s``), ``wall_s_per_1000_updates`` = ``rounds_wall_s * 1000 / updates``, and
``steady_wall_s_per_1000_updates`` the same without round 1 (which dispatches the first
``--concurrency`` trainings and pays every worker's first-use costs: lazy torch imports, the
terminals' first contexts): rounds 2..R aggregate K updates each and dispatch K.

Run::

    python experiments/bench_async.py [--engine fedsplit|serial] [--terminals 10000] [--concurrency 100] [--buffer 10] [--updates 1000]
"""

from __future__ import annotations

import argparse
import time

from fedsplit.config import load_config
from fedsplit.simulation.ray_env import quiet_ray
from fedsplit.simulation.runner import ENGINES, quiet_flower
from fedsplit.simulation.server_app import RunSession, build_protocol

CLASSES = ("laptop", "jetson-nano", "raspberry-pi-4", "smartphone-mid", "smartphone-low")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("fedsplit", "serial"), default="fedsplit")
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--buffer", type=int, default=10)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # tiny models: one thread each beats a contended thread pool (serial engine)
    quiet_flower()
    quiet_ray()
    per_class = args.terminals // len(CLASSES)
    devices = "{" + ", ".join(f"{c} = {per_class}" for c in CLASSES) + "}"
    cfg = load_config(
        None,
        [
            f"devices={devices}", "data.name=synthetic", f"data.samples_per_client={args.samples}", "model.name=mlp",
            "train.local_epochs=1", "training.mode=fedbuff", f"orchestration.concurrency={args.concurrency}",
            f"orchestration.buffer_size={args.buffer}", f"rounds={args.updates // args.buffer}", "training.eval_every=0",
            "training.resume_every=0", "progress=false", f"engine.name={args.engine}",
        ],
    )
    session = RunSession.from_config(cfg)
    captured = {}

    def keep(cfg_, metered):  # noqa: ANN001, ANN202
        captured["protocol"] = protocol = build_protocol(cfg_, metered)
        return protocol

    session.protocol_factory = keep
    start = time.perf_counter()
    ENGINES[args.engine](session)
    wall = time.perf_counter() - start
    if session.error is not None:
        raise session.error
    protocol = captured["protocol"]
    updates = len(protocol.events)
    times = [e[3] for e in protocol.events]
    walls = [session.ledger.rounds[r].wall_s for r in sorted(session.ledger.rounds)]
    rounds_wall = sum(walls)
    steady = sum(walls[1:]) * 1000 / (args.buffer * (len(walls) - 1)) if len(walls) > 1 else float("nan")
    print(
        f"engine={args.engine} terminals={session.population.size} in_flight={args.concurrency} K={args.buffer} updates={updates} "
        f"wall_s={wall:.2f} startup_s={wall - rounds_wall:.2f} rounds_wall_s={rounds_wall:.2f} "
        f"wall_s_per_1000_updates={rounds_wall * 1000 / updates:.2f} steady_wall_s_per_1000_updates={steady:.2f} sim_s={protocol.now_s:.3f} events_sorted={times == sorted(times)}"
    )


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
