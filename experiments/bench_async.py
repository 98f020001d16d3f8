"""Benchmark (issue #16 item 3): FedBuff at scale, wall time per 1,000 aggregated updates.

10,000 terminals (2,000 of each of five device classes), ``--concurrency`` (100) in flight,
FedBuff with K = ``--buffer`` (10), the MLP on synthetic data (``--samples`` per terminal), no
evaluation. The run goes through the whole server path (``run_server``: the metered grid, the
ledger, the server loop) on an in-process engine (the real ClientApp on real Flower messages, one
after the other: no Ray), so the wall time is the protocol's and the grid's overhead plus serial
local training. It prints::

    terminals=<N> in_flight=<C> K=<K> updates=<U> wall_s=<t> wall_s_per_1000_updates=<t'> sim_s=<s> events_sorted=<bool>

Run::

    python experiments/bench_async.py [--terminals 10000] [--concurrency 100] [--buffer 10] [--updates 1000]
"""

from __future__ import annotations

import argparse
import time

from fedsplit.clients.app import make_client_app
from fedsplit.config import load_config
from fedsplit.learning import config_to_json
from fedsplit.simulation.engine import EngineGrid
from fedsplit.simulation.server_app import RunSession, run_server

CLASSES = ("laptop", "jetson-nano", "raspberry-pi-4", "smartphone-mid", "smartphone-low")


def main(argv: list[str] | None = None) -> None:
    from experiments.orchestration import SerialEngine

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terminals", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--buffer", type=int, default=10)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=32)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # tiny models: one thread each beats a contended thread pool
    per_class = args.terminals // len(CLASSES)
    devices = "{" + ", ".join(f"{c} = {per_class}" for c in CLASSES) + "}"
    cfg = load_config(
        None,
        [
            f"devices={devices}", "data.name=synthetic", f"data.samples_per_client={args.samples}", "model.name=mlp",
            "train.local_epochs=1", "training.mode=fedbuff", f"orchestration.concurrency={args.concurrency}",
            f"orchestration.buffer_size={args.buffer}", f"rounds={args.updates // args.buffer}", "training.eval_every=0",
            "progress=false",
        ],
    )
    session = RunSession.from_config(cfg)
    captured = {}
    engine = SerialEngine(make_client_app(config_json=config_to_json(cfg)), session.population)
    from fedsplit.simulation import server_app

    build = server_app.build_protocol

    def keep(cfg_, metered):  # noqa: ANN001, ANN202
        captured["protocol"] = protocol = build(cfg_, metered)
        return protocol

    session.protocol_factory = keep
    start = time.perf_counter()
    run_server(EngineGrid(engine), session)
    wall = time.perf_counter() - start
    protocol = captured["protocol"]
    updates = len(protocol.events)
    times = [e[3] for e in protocol.events]
    print(
        f"terminals={session.population.size} in_flight={args.concurrency} K={args.buffer} updates={updates} "
        f"wall_s={wall:.2f} wall_s_per_1000_updates={wall * 1000 / updates:.2f} sim_s={protocol.now_s:.3f} "
        f"events_sorted={times == sorted(times)}"
    )


if __name__ == "__main__":
    main()
