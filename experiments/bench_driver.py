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
    python experiments/bench_driver.py --ray-actors 4         # also on Ray, 4 actors answering at once
    python experiments/bench_driver.py --ray-actors 2 --transport channel   # the same through a socket per actor
    python experiments/bench_driver.py --gc 200               # one 200-round run: the collector's share (~10 s)
    python experiments/bench_driver.py --ray-call-cost 16     # Ray alone: driver CPU per actor call, 16 actors
    python experiments/bench_driver.py --ray-call-cost 2 --compiled  # the same through a Ray Compiled Graph

It prints one line per workload::

    workload=<name> driver_round_ms=.. driver_round_median_ms=.. per_reply_us=.. pure_round_ms=.. bound_16=.. bound_64=.. replies_per_round=..

``driver_round_ms`` is the best (then the median) driver time of one round, ``per_reply_us`` that
over the replies of a round, ``pure_round_ms`` the plain loop's round (one core), and
``bound_P = pure_round_ms / (P * driver_round_ms)`` the efficiency no engine built on this server
reaches with P actors (a bound from two measurements, not a measurement at P cores). With
``--ray-actors P`` a second line gives the same rounds on Ray::

    workload=<name> engine=ray actors=P transport=ray|channel shared_records=on|off round_ms=.. driver_cpu_ms=.. main_thread_cpu_ms=.. per_reply_us=.. bound_P=..

(``shared_records=off``: the same with the round's global model pickled into every actor call
instead of put in the object store once; :func:`ray_rounds`.)

``--gc ROUNDS`` one line of a long run: ``round_ms``, the collector's ``gc_ms`` and ``gc_share`` of
the run, collections and milliseconds by generation, tracked objects; and ``--ray-call-cost P``
Ray's own driver CPU per actor call (``call_cpu_ms``) with P plain actors, one call each a round.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import torch
from bench_engine import COMMON, SMOKE, WORKLOADS, run_pure, terminals_per_round
from flwr.app import Message

from fedsplit.config import RunConfig, load_config
from fedsplit.config.schema import DEFAULT_TRANSPORT, TRANSPORTS
from fedsplit.simulation.engine import SerialEngine


class InstantEngine(SerialEngine):
    """A :class:`SerialEngine` whose terminals reply at once: each reply carries the content the
    real ClientApp gave that terminal for that message type on its first call, unpickled afresh."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - SerialEngine's
        super().__init__(*args, **kwargs)
        self.canned: dict[tuple[int, str], bytes] = {}
        self.app_calls = 0  # messages the real ClientApp ran (the first reply of each terminal and type)

    @classmethod
    def recorded(cls, cfg: RunConfig) -> "InstantEngine":
        """An engine for ``cfg``'s terminals whose replies one run of ``cfg`` on fedsplit's
        ClientApp has recorded (and every cache warmed)."""
        from fedsplit.clients.app import make_client_app
        from fedsplit.devices import Population, resolve_profiles
        from fedsplit.learning import config_to_json

        engine = cls(make_client_app(config_json=config_to_json(cfg)), Population(cfg.devices, resolve_profiles(cfg.profiles)))
        driver_rounds(cfg, engine)
        return engine

    def _run_in_order(self, messages):  # noqa: ANN001, ANN202 - SerialEngine's
        replies, first = [], []
        for msg in messages:
            key = (msg.metadata.dst_node_id, msg.metadata.message_type)
            if key in self.canned:
                replies.append(replayed(self.canned, key, msg))
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


def replayed(canned: dict[tuple[int, str], bytes], key: tuple[int, str], msg: Message) -> Message:
    """The reply to ``msg`` with the content recorded under ``key`` (node id, message type), unpickled afresh."""
    return Message(pickle.loads(canned[key]), reply_to=msg)


def replay_app(canned: dict[tuple[int, str], bytes]):  # noqa: ANN201 - a ClientApp
    """A ClientApp that answers each message at once with the content :class:`InstantEngine`
    recorded for its terminal (by node id) and message type, unpickled afresh."""
    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.reports_flops = True  # the recorded replies carry the real app's "flops"

    def replay(msg: Message, context) -> Message:  # noqa: ANN001 - Flower's Context
        return replayed(canned, (context.node_id, msg.metadata.message_type), msg)

    app.train()(replay)
    app.evaluate()(replay)
    return app


def driver_rounds(cfg: RunConfig, engine) -> float:  # noqa: ANN001 - InstantEngine or RayEngine
    """Seconds of one whole run of ``cfg`` against ``engine`` (the driver's time, all rounds)."""
    from fedsplit.simulation.server_app import RunSession, run_server

    session = RunSession.from_config(cfg)
    run_server(engine.grid(), session)
    return session.strategy_wall_s


def bench(name: str, overrides: list[str], passes: int, ray_actors: int = 0, transport: str = DEFAULT_TRANSPORT) -> None:
    torch.set_num_threads(1)
    cfg = load_config(None, COMMON + overrides)
    engine = InstantEngine.recorded(cfg)
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
    if ray_actors:
        for shared, (ray_round, ray_cpu, ray_main) in ray_rounds(cfg, engine, passes, ray_actors, transport).items():
            print(
                f"workload={name} engine=ray actors={ray_actors} transport={transport} shared_records={shared} round_ms={ray_round * 1e3:.2f} "
                f"driver_cpu_ms={ray_cpu * 1e3:.2f} main_thread_cpu_ms={ray_main * 1e3:.2f} "
                f"per_reply_us={ray_round / per_round * 1e6:.1f} bound_{ray_actors}={pure_round / (ray_actors * ray_round):.3f}",
                flush=True,
            )


def ray_rounds(cfg: RunConfig, recorded: InstantEngine, passes: int, actors: int, transport: str = DEFAULT_TRANSPORT) -> dict[str, tuple[float, float, float]]:
    """Best seconds per round of ``cfg`` on fedsplit's Ray engine with ``actors`` actors whose
    terminals answer at once with the replies ``recorded`` holds (:func:`replay_app`): the server, Ray's calls and the actors' message
    handling, without training; and the driver process's CPU seconds per round in that run (all
    its threads, Ray's included, then its main thread alone, where the ServerApp runs). On a
    machine with fewer cores than ``actors`` the actors share them, so the figures are upper
    bounds of what a machine with a core per actor gives.

    Two ways, pass by pass on the same actors: ``on``, the engine as it is (a large global model
    goes to the object store once a round, :mod:`fedsplit.simulation.shared_content`), and
    ``off``, that switched off (the model pickled into every actor call). ``transport`` is the
    engine's (``ray``: Ray calls; ``channel``: a Unix socket to each local actor)."""
    import ray

    from fedsplit.simulation.engine import RayEngine, ray_init_options

    ray.init(**ray_init_options(num_cpus=actors))
    try:
        with RayEngine(replay_app(recorded.canned), recorded.population, num_actors=actors, cpus_per_actor=1.0, transport=transport) as engine:
            driver_rounds(cfg, engine)  # warm-up: every actor has run
            sizes = {"on": engine.shared_record_bytes, "off": float("inf")}
            best = {way: (float("inf"), 0.0, 0.0) for way in sizes}
            for _ in range(passes):
                for way, size in sizes.items():
                    engine.shared_record_bytes = size
                    cpu, main = time.process_time(), time.thread_time()
                    wall = driver_rounds(cfg, engine)
                    best[way] = min(best[way], (wall, time.process_time() - cpu, time.thread_time() - main))
            return {way: (wall / cfg.rounds, cpu / cfg.rounds, main / cfg.rounds) for way, (wall, cpu, main) in best.items()}
    finally:
        ray.shutdown()


def gc_bench(name: str, overrides: list[str], rounds: int) -> None:
    """One ``rounds``-round run: seconds per round and seconds spent in Python's cyclic collector,
    by generation (a full collection walks every tracked object of the process: torch, Flower and
    Ray leave ~600k, and a run adds its ledger rows)."""
    import gc

    torch.set_num_threads(1)
    cfg = load_config(None, COMMON + overrides + [f"rounds={rounds}"])
    engine = InstantEngine.recorded(load_config(None, COMMON + overrides + ["rounds=1"]))
    started, spent, count = [0.0], [0.0, 0.0, 0.0], [0, 0, 0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
            count[info["generation"]] += 1

    gc.callbacks.append(timed)
    try:
        seconds = driver_rounds(cfg, engine)
    finally:
        gc.callbacks.remove(timed)
    print(f"workload={name} rounds={rounds} round_ms={seconds / rounds * 1e3:.2f} gc_ms={sum(spent) * 1e3:.1f} "
          f"gc_share={sum(spent) / seconds:.3f} collections={','.join(map(str, count))} "
          f"by_generation_ms={','.join(f'{s * 1e3:.0f}' for s in spent)} tracked_objects={len(gc.get_objects())}", flush=True)


def ray_call_cost(actors: int, rounds: int = 20, passes: int = 3, compiled: bool = False) -> None:
    """Ray's own cost on the driver, without fedsplit: CPU seconds of the calling thread per actor
    call, each of ``actors`` plain actors getting one call a round with six 20 KB items (about a
    batch of the 100-terminal MLP's replies) and returning them, waited for one at a time as the
    engine does. Best of ``passes``.

    ``compiled``: the same round through a Ray Compiled Graph (one ``MultiOutputNode`` over the
    actors, shared-memory channels in place of Ray's task submission), each actor's output got in
    order (a ``CompiledDAGRef`` cannot be passed to ``ray.wait``); every get times out after 60 s
    so a stuck graph ends the benchmark instead of hanging it."""
    import ray

    from fedsplit.simulation.engine import ray_init_options

    @ray.remote(num_cpus=1)
    class Echo:
        def echo(self, items: list) -> list:
            return items

    ray.init(**ray_init_options(num_cpus=actors))
    try:
        echoes = [Echo.remote() for _ in range(actors)]
        ray.get([e.echo.remote([]) for e in echoes])
        items = [b"x" * 20_000] * 6
        graph = None
        if compiled:
            from ray.dag import InputNode, MultiOutputNode

            with InputNode() as given:
                graph = MultiOutputNode([e.echo.bind(given) for e in echoes]).experimental_compile()
            ray.get(graph.execute(items), timeout=60)

        def one_round() -> None:
            if graph is not None:
                for ref in graph.execute(items):
                    ray.get(ref, timeout=60)
                return
            running = [e.echo.remote(items) for e in echoes]
            while running:
                done, running = ray.wait(running, num_returns=1)
                ray.get(done[0])

        best = (float("inf"), float("inf"))
        for _ in range(passes):
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(rounds):
                one_round()
            best = min(best, ((time.thread_time() - cpu) / (rounds * actors), (time.perf_counter() - wall) / rounds))
        engine = "ray-compiled" if compiled else "ray-only"
        print(f"engine={engine} actors={actors} call_cpu_ms={best[0] * 1e3:.3f} round_ms={best[1] * 1e3:.2f}", flush=True)
        if graph is not None:
            graph.teardown()
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="mlp100", help=f"comma-separated: {','.join(WORKLOADS)}")
    parser.add_argument("--passes", type=int, default=10, help="timed runs per workload (best and median reported)")
    parser.add_argument("--smoke", action="store_true", help="tiny settings, two passes (seconds)")
    parser.add_argument("--ray-actors", type=int, default=0, metavar="P",
                        help="also time the rounds on fedsplit's Ray engine with P actors answering at once")
    parser.add_argument("--transport", choices=TRANSPORTS, default=DEFAULT_TRANSPORT,
                        help="with --ray-actors: the engine's transport (ray: Ray calls; channel: a Unix socket to each local actor)")
    parser.add_argument("--gc", type=int, default=0, metavar="ROUNDS",
                        help="instead: one ROUNDS-round run, with the time Python's cyclic collector took")
    parser.add_argument("--ray-call-cost", type=int, default=0, metavar="P",
                        help="instead: Ray's own driver CPU per actor call with P plain actors (no fedsplit code)")
    parser.add_argument("--compiled", action="store_true",
                        help="with --ray-call-cost: the same calls through a Ray Compiled Graph")
    args = parser.parse_args(argv)
    for item in args.workloads.split(","):  # an unknown name: one line now, not a KeyError traceback
        if item not in WORKLOADS:
            parser.error(f"argument --workloads: {item!r} is not known; allowed: {', '.join(WORKLOADS)}")
    from fedsplit.simulation.runner import quiet_flower

    quiet_flower()
    if args.ray_call_cost:
        ray_call_cost(args.ray_call_cost, compiled=args.compiled)
        return 0
    if args.gc:
        for name in args.workloads.split(","):
            gc_bench(name, WORKLOADS[name], args.gc)
        return 0
    if args.smoke:
        bench("mlp", SMOKE["mlp"], 2)
        return 0
    for name in args.workloads.split(","):
        bench(name, WORKLOADS[name], args.passes, args.ray_actors, args.transport)
    return 0


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
