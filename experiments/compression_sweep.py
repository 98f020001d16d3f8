"""Update-compression sweep: accuracy vs uplink bytes of every codec, FedAvg CNN on digits, over seeds.

For each seed, every codec trains the same federation (same seed, rounds, data split and initial
weights) with ``compression = {uplink = <codec>, ..., seed = <seed>}``, once on an IID split and once
on a Dirichlet (alpha = 0.5) split of scikit-learn's digits (1437 training images over the
terminals, 360 for the server's test set), with the FedAvg CNN at digits' native 8x8 resolution
(188,810 parameters; at 28x28 it has 1.66 M and a run costs ~10x more on 2 cores, too slow for 18
runs here). Defaults: 10 always-online terminals (all sampled every round), 30 rounds of 1 local
epoch of SGD (lr 0.05, momentum 0.9, batch 16). The compressed runs need those rounds: top-k and
PowerSGD lag the fp32 run by ~10 rounds early on and reach its plateau (~0.97) only after ~25 rounds.

Seeds (``--seeds N``: seeds 0 .. N-1; default ``DEFAULT_SEEDS`` = 4, ~3 min each on 2 cores: the
whole sweep took 753 s on 2026-12-07, with the cost benchmark; ``--smoke``: 1). The run's ``seed`` draws the server's 360
test images out of the 1797, the terminals' partition (IID or Dirichlet), the model's initial
weights and the terminals' batch order; the codec's own randomness (random-k's indices, QSGD's
rounding, PowerSGD's initial factor) gets the same seed (``compression.seed``). One seed's final
accuracy says little (one test image is 0.28 pp, and the claims are about 1 pp), so every claim
here is on the mean over the seeds; seed 0 is the single-seed sweep of before.

Codecs (``CODECS``): identity (fp32, the baseline), fp16, int8, QSGD 16 levels, top-k 1 % with and
without error feedback, random-k 1 % (error feedback on: sent unscaled, see
:class:`~fedsplit.compression.RandomKCodec`), scaled sign with error feedback, PowerSGD rank 2.

Prints, per run as it finishes (``seed=<s> codec=<name> partition=<p> ratio=<x> ... final_acc=<x>
delta_acc_pp=<x> ...``, against the identity run of the same seed), then per (partition, codec)
cell over its seeds::

    codec=<name> partition=<iid|dirichlet> seeds=<n> ratio=<x> ledger_ratio=<x> final_acc_mean=<x>
    final_acc_spread=<min>..<max> final_acc_std=<x> delta_acc_pp=<x> delta_acc_pp_spread=<min>..<max> ...

``ratio`` is the fp32 size of the uplink updates over their compressed payloads, summed over all
rounds, clients and seeds, as accounted by :class:`~fedsplit.strategies.compression.CompressedStrategy`
(``fedsplit.dense-bytes`` / ``fedsplit.payload-bytes``, the same totals as ``compression_ratio`` in
``summary.json``); ``ledger_ratio`` is the mean whole-message uplink size (protobuf,
``LedgerRow.bytes_up``) of the identity runs over this codec's, i.e. it also counts the reply's
metrics and record framing; ``final_acc`` is the server-side test accuracy after the last round
(``_mean`` over the seeds, ``_spread`` their min..max, ``_std`` their sample standard deviation);
``delta_acc_pp`` is the mean over the seeds of the codec's final accuracy minus the identity run's
of the same seed (paired: same test set, partition and initial weights), in percentage points, and
``delta_acc_pp_spread`` the min..max of those per-seed differences; ``last5_acc`` is the mean of
the last 5 rounds (again ``_mean`` and ``_spread`` over the seeds); ``uplink_*_bytes_mean`` are a
run's totals, averaged over the seeds; ``rejected`` and ``wall_s`` are summed over them. Then, per
codec and cost setting::

    codec=<name> codec_cost_share=<(encode + decode) / local training time> ... setting=<s>

with the client's ``compress_with_feedback`` (encode + its decode) plus the server's decode, on one
core, against one core's local training: ``fedavg-cnn-28x28`` is the FedAvg CNN and FedAvg MNIST
client of ``experiments/bench_codecs.py --train`` (the acceptance bar), ``as-swept`` the model and
local job of this sweep (seed 0). Last, the acceptance checks (IID, on the means over the seeds:
a codec is "within p pp of fp32" when the mean of its paired per-seed differences is) as
``check ...: PASS|FAIL (numbers)`` (exit status 1 when one fails; under ``--smoke``, 2 rounds, one
seed and one timed repetition, the accuracy and codec-cost claims are ``SKIP``, the compression
ratios still count) and, not a check, the worst codec's cost share of this sweep's own small
local job.

All runs share one Ray instance and one set of client actors (:class:`SharedEngine`): starting the
actors (imports, data, FLOP counts) costs ~15-40 s, as much as a whole run. Each run gets
fresh client contexts (no error-feedback residual or codec state carries over), and its messages go
through the same ServerApp (:func:`~fedsplit.simulation.server_app.run_server`), metered grid,
ClientApp and compression mod as ``fedsplit simulate``; ``--fresh-engines`` runs each codec
through :func:`~fedsplit.simulation.runner.simulate` instead (same numbers, slower).

Run:  python experiments/compression_sweep.py [--smoke] [--seeds 4] [--out DIR] [--rounds 30] [--fresh-engines]
Writes ``curves.csv`` (per round, every seed's run: a ``seed`` column), ``summary.csv`` (per
partition and codec, over the seeds) and ``accuracy_vs_uplink.png`` (per round, the mean accuracy
over the seeds against the mean cumulative uplink bytes, with the seeds' min..max as a band).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

from fedsplit.cli_types import positive_int  # noqa: E402
from fedsplit.compression import CompressionConfig, EncodeContext, compress_with_feedback, decode_update, specs_of  # noqa: E402
from fedsplit.config import RunConfig, load_config  # noqa: E402
from fedsplit.inference.experiment_io import Checks, plt, write_csv  # noqa: E402
from fedsplit.report import shown_path  # noqa: E402
from fedsplit.output_paths import output_folder  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_codecs  # noqa: E402

#: Codec settings of the sweep: label -> ``compression`` table.
CODECS: dict[str, dict[str, Any]] = {
    "identity": {"uplink": "identity"},
    "fp16": {"uplink": "fp16"},
    "int8": {"uplink": "int8"},
    "qsgd16": {"uplink": "qsgd", "levels": 16},
    "topk-ef": {"uplink": "topk", "density": 0.01, "error_feedback": True},
    "topk-noef": {"uplink": "topk", "density": 0.01, "error_feedback": False},
    "randk-ef": {"uplink": "randk", "density": 0.01, "error_feedback": True},
    "sign-ef": {"uplink": "sign", "error_feedback": True},
    "powersgd2": {"uplink": "powersgd", "rank": 2, "error_feedback": True},
}
BASELINE = "identity"
SMOKE_CODECS = ("identity", "topk-ef")
SMOKE_ROUNDS = 2
#: Seeds of a full sweep (0 .. DEFAULT_SEEDS-1): ~3 min each on 2 cores; a smoke run has one.
DEFAULT_SEEDS = 4
PARTITIONS: dict[str, list[str]] = {
    "iid": ["data.partitioner=iid"],
    "dirichlet": ["data.partitioner=dirichlet", "data.alpha=0.5"],
}
#: The acceptance bar on a codec's compute cost, as a fraction of local training time.
MAX_COST_SHARE = 0.05


@dataclass(frozen=True)
class Settings:
    """The federation every codec trains (identical for all codecs of a sweep)."""

    rounds: int = 30
    local_epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 16
    terminals: int = 10
    resolution: int = 0
    seed: int = 0

    def overrides(self, partition: str, out_dir: Path) -> list[str]:
        """``--set`` overrides of the run (without compression)."""
        return [
            f"seed={self.seed}",
            f"rounds={self.rounds}",
            "model.name=fedavg-cnn",
            "data.name=digits",
            f"data.resolution={self.resolution}",
            *PARTITIONS[partition],
            # one always-online device class: every terminal trains every round
            f"devices={{edge-node = {self.terminals}}}",
            "profiles={edge-node = {base = 'raspberry-pi-4', availability = 1.0}}",
            "strategy.name=fedavg",
            "strategy.fraction_train=1.0",
            f"strategy.min_train_nodes={self.terminals}",
            f"train.local_epochs={self.local_epochs}",
            f"train.lr={self.lr}",
            f"train.momentum={self.momentum}",
            f"train.batch_size={self.batch_size}",
            "engine.name=fedsplit",
            "progress=false",
            f"out_dir={out_dir}",
        ]


def run_config(settings: Settings, partition: str, compression: Mapping[str, Any], out_dir: Path) -> RunConfig:
    """The validated configuration of one (partition, codec) run; a codec's own randomness gets
    the run's seed (``compression.seed``)."""
    cfg = load_config(None, settings.overrides(partition, out_dir))
    cfg.compression = {**compression, "seed": settings.seed} if compression else {}
    CompressionConfig.from_dict(cfg.compression)  # validate now, not inside the run
    return cfg


# -- running ------------------------------------------------------------------------------------
class SharedEngine:
    """One set of client actors reused by every run of the sweep (see the module docstring).

    The actors' ClientApp reads each run's configuration the way a deployed ClientApp does, from
    its Context's run config (``config-file``): :meth:`simulate` writes the run's configuration,
    without its ``compression`` table (the client learns the codec from each train message), to
    ``workdir`` and hands its path to the terminals' fresh Contexts.

    Parameters
    ----------
    cfg : RunConfig
        Any run of the sweep (they all have the same population).
    workdir : Path
        Where the clients' configuration files are written.
    """

    def __init__(self, cfg: RunConfig, workdir: Path) -> None:
        from fedsplit.clients.app import make_client_app
        from fedsplit.simulation.engine import RayEngine

        self.workdir = Path(workdir)
        self.engine = RayEngine.from_run_config(cfg, make_client_app())

    def __enter__(self) -> SharedEngine:
        self.engine.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.engine.shutdown()

    def _client_config_file(self, cfg: RunConfig) -> Path:
        import zlib

        from fedsplit.config.loader import dump_config
        from fedsplit.learning import config_to_json

        base = replace(cfg, compression={})
        path = self.workdir / f"client-{zlib.crc32(config_to_json(base).encode()):08x}.toml"
        if not path.is_file():
            self.workdir.mkdir(parents=True, exist_ok=True)
            dump_config(base, path)
        return path

    def simulate(self, cfg: RunConfig):  # noqa: ANN201 - RunOutcome
        """Run ``cfg`` with :func:`~fedsplit.simulation.runner.simulate` (``write=False``) on these actors."""
        from fedsplit.simulation.runner import simulate

        self.engine.run_config = {"config-file": str(self._client_config_file(cfg)), "overrides": ""}
        self.engine.contexts.clear()  # fresh Contexts: no residual or codec state from the previous run
        return simulate(cfg, write=False, engine=self.engine)


@dataclass
class CodecRun:
    """What one (partition, codec, seed) run measured."""

    partition: str
    codec: str
    accuracy: list[float]
    loss: list[float]
    payload_up: list[int]
    dense_up: list[int]
    ledger_up: list[int]
    ledger_replies: int
    rejected: int
    wall_s: float
    extra: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    @property
    def final_acc(self) -> float:
        """Server-side test accuracy after the last round."""
        return self.accuracy[-1]

    @property
    def last5_acc(self) -> float:
        """Mean accuracy over the last 5 rounds (the plateau; the test set has only 360 images)."""
        return float(np.mean(self.accuracy[-5:]))

    @property
    def ratio(self) -> float:
        """fp32 bytes of all uplink updates over their compressed payload bytes."""
        return sum(self.dense_up) / sum(self.payload_up)

    @property
    def ledger_bytes_per_reply(self) -> float:
        """Mean whole-message uplink bytes of a train reply (protobuf size, from the ledger)."""
        return sum(self.ledger_up) / max(self.ledger_replies, 1)


def measure(partition: str, codec: str, outcome: Any, seed: int = 0) -> CodecRun:
    """Per-round accuracy and uplink bytes (payload, fp32, whole message) of a finished run."""
    session = outcome.session
    rounds = sorted(session.ledger.rounds)
    payload: dict[int, int] = defaultdict(int)
    dense: dict[int, int] = defaultdict(int)
    for rec in session.strategy.traffic:
        if rec.direction == "up":
            payload[rec.server_round] += rec.payload_bytes
            dense[rec.server_round] += rec.dense_bytes
    ledger: dict[int, int] = defaultdict(int)
    replies = 0
    for row in session.ledger.rows:
        if row.phase == "train" and row.status in ("ok", "rejected"):
            ledger[row.round] += row.bytes_up
            replies += 1
    summary_ratio = outcome.summary.get("compression_ratio", float("nan"))
    return CodecRun(
        partition=partition,
        codec=codec,
        accuracy=[float(session.ledger.rounds[r].metrics["accuracy"]) for r in rounds],
        loss=[float(session.ledger.rounds[r].metrics["loss"]) for r in rounds],
        payload_up=[payload[r] for r in rounds],
        dense_up=[dense[r] for r in rounds],
        ledger_up=[ledger[r] for r in rounds],
        ledger_replies=replies,
        rejected=int(outcome.summary["rejected"]),
        wall_s=float(outcome.summary["wall_time_s"]),
        extra={"summary_ratio": float(summary_ratio)},
        seed=seed,
    )


@contextmanager
def ray_session(num_cpus: int) -> Iterator[None]:
    """A local Ray for the whole sweep (reused if one is already running in this process)."""
    import logging

    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_partition(
    settings: Settings, partition: str, codecs: list[str], out_dir: Path, engine: SharedEngine | None
) -> list[CodecRun]:
    """Train every codec on one partition with ``settings.seed`` (on ``engine``, or through
    ``simulate()`` when it is ``None``); print one line per codec as it finishes."""
    from fedsplit.simulation.runner import simulate

    runs: list[CodecRun] = []
    for codec in codecs:
        cfg = run_config(settings, partition, CODECS[codec], out_dir)
        outcome = simulate(cfg, write=False) if engine is None else engine.simulate(cfg)
        run = measure(partition, codec, outcome, seed=settings.seed)
        runs.append(run)
        print_codec_line(run, runs[0] if runs[0].codec == BASELINE else None)
    return runs


def print_codec_line(run: CodecRun, baseline: CodecRun | None) -> None:
    """One run: ``seed=... codec=... partition=... ratio=... ledger_ratio=... final_acc=... delta_acc_pp=...``
    (against ``baseline``, the identity run of the same seed and partition)."""
    ledger_ratio = baseline.ledger_bytes_per_reply / run.ledger_bytes_per_reply if baseline else float("nan")
    delta = 100.0 * (run.final_acc - baseline.final_acc) if baseline else float("nan")
    run.extra.update({"ledger_ratio": ledger_ratio, "delta_acc_pp": delta})
    print(
        f"seed={run.seed} codec={run.codec} partition={run.partition} ratio={run.ratio:.2f} ledger_ratio={ledger_ratio:.2f} "
        f"final_acc={run.final_acc:.4f} delta_acc_pp={delta:+.2f} last5_acc={run.last5_acc:.4f} "
        f"uplink_payload_bytes={sum(run.payload_up)} uplink_ledger_bytes={sum(run.ledger_up)} "
        f"rejected={run.rejected} wall_s={run.wall_s:.1f}",
        flush=True,
    )


# -- over seeds ---------------------------------------------------------------------------------
def _std(values: list[float]) -> float:
    """Sample standard deviation (nan for fewer than 2 values)."""
    return statistics.stdev(values) if len(values) > 1 else float("nan")


def _spread(values: list[float], fmt: str) -> str:
    """``min..max``."""
    return f"{min(values):{fmt}}..{max(values):{fmt}}"


@dataclass
class Cell:
    """One (partition, codec) cell over its seeds: ``runs`` one per seed, in seed order, and
    ``baseline`` the identity runs of the same partition (any seeds; paired by seed)."""

    partition: str
    codec: str
    runs: list[CodecRun]
    baseline: list[CodecRun] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def final_accs(self) -> list[float]:
        return [r.final_acc for r in self.runs]

    @property
    def final_acc_mean(self) -> float:
        return float(np.mean(self.final_accs))

    @property
    def last5_accs(self) -> list[float]:
        return [r.last5_acc for r in self.runs]

    @property
    def last5_acc_mean(self) -> float:
        return float(np.mean(self.last5_accs))

    @property
    def deltas_pp(self) -> list[float]:
        """Per seed with an identity run: 100 x (this codec's final accuracy - identity's), in seed order."""
        base = {r.seed: r for r in self.baseline}
        return [100.0 * (r.final_acc - base[r.seed].final_acc) for r in self.runs if r.seed in base]

    @property
    def delta_pp(self) -> float:
        """Mean of the paired per-seed differences to identity (nan without a paired seed)."""
        deltas = self.deltas_pp
        return float(np.mean(deltas)) if deltas else float("nan")

    @property
    def ratio(self) -> float:
        """fp32 bytes of all uplink updates over their compressed payload bytes, all seeds pooled."""
        return sum(sum(r.dense_up) for r in self.runs) / sum(sum(r.payload_up) for r in self.runs)

    @property
    def ratios(self) -> list[float]:
        return [r.ratio for r in self.runs]

    @property
    def ledger_ratio(self) -> float:
        """Identity's mean whole-message uplink bytes of a train reply over this codec's, all seeds pooled."""
        if not self.baseline:
            return float("nan")

        def per_reply(runs: list[CodecRun]) -> float:
            return sum(sum(r.ledger_up) for r in runs) / max(sum(r.ledger_replies for r in runs), 1)

        return per_reply(self.baseline) / per_reply(self.runs)

    def mean_of(self, name: str) -> float:
        """Mean over the seeds of a run's total of the per-round list ``name`` (e.g. ``payload_up``)."""
        return float(np.mean([sum(getattr(r, name)) for r in self.runs]))


def cells_of(runs: list[CodecRun]) -> list[Cell]:
    """Group runs into (partition, codec) cells, in first-seen order, each cell's runs in seed order;
    a seed run twice in a cell is an error (the pairing would be ambiguous)."""
    grouped: dict[tuple[str, str], list[CodecRun]] = {}
    for run in runs:
        grouped.setdefault((run.partition, run.codec), []).append(run)
    cells = []
    for (partition, codec), cell_runs in grouped.items():
        seeds = [r.seed for r in cell_runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{partition}/{codec}: seed run twice ({sorted(seeds)})")
        cells.append(Cell(partition, codec, sorted(cell_runs, key=lambda r: r.seed),
                          sorted(grouped.get((partition, BASELINE), []), key=lambda r: r.seed)))
    return cells


def print_cell_line(cell: Cell) -> None:
    """``codec=... partition=... seeds=... ratio=... final_acc_mean=... final_acc_spread=... delta_acc_pp=...``."""
    deltas = cell.deltas_pp or [float("nan")]
    print(
        f"codec={cell.codec} partition={cell.partition} seeds={len(cell.runs)} ratio={cell.ratio:.2f} "
        f"ledger_ratio={cell.ledger_ratio:.2f} final_acc_mean={cell.final_acc_mean:.4f} "
        f"final_acc_spread={_spread(cell.final_accs, '.4f')} final_acc_std={_std(cell.final_accs):.4f} "
        f"delta_acc_pp={cell.delta_pp:+.2f} delta_acc_pp_spread={_spread(deltas, '+.2f')} "
        f"last5_acc_mean={cell.last5_acc_mean:.4f} last5_acc_spread={_spread(cell.last5_accs, '.4f')} "
        f"uplink_payload_bytes_mean={cell.mean_of('payload_up'):.0f} uplink_ledger_bytes_mean={cell.mean_of('ledger_up'):.0f} "
        f"rejected={sum(r.rejected for r in cell.runs)} wall_s={sum(r.wall_s for r in cell.runs):.1f}",
        flush=True,
    )


# -- codec cost ---------------------------------------------------------------------------------
#: Cost settings: the FedAvg CNN and client of ``bench_codecs.py --train`` (the acceptance bar), and
#: the model and local job this sweep actually trains (for information).
BENCH_SETTING = "fedavg-cnn-28x28"
SWEPT_SETTING = "as-swept"


@dataclass(frozen=True)
class Cost:
    """A codec's compute per round and client against that client's local training."""

    setting: str
    codec: str
    encode_ms: float
    decode_ms: float
    train_ms: float

    @property
    def share(self) -> float:
        """(client encode, incl. its decode for the residual, + server decode) / local training."""
        return (self.encode_ms + self.decode_ms) / self.train_ms


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads (a terminal's actor has one CPU; codecs use one core)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def codec_cost(setting: str, codec: str, update: dict[str, np.ndarray], train_ms: float, reps: int) -> Cost:
    """Median time of the client's ``compress_with_feedback`` and the server's ``decode_update``.

    ``compress_with_feedback`` is what :mod:`~fedsplit.clients.compression_mod` runs: it adds
    the residual, encodes, and decodes once (the residual, and the finiteness check).
    """
    cfg = CompressionConfig.from_dict(CODECS[codec])
    codec_obj = cfg.make_uplink_codec(server_round=1)
    specs = specs_of(update)
    rng = np.random.default_rng(0)
    residual = {k: (rng.standard_normal(v.shape) * 1e-4).astype(np.float32) for k, v in update.items()}
    state: dict[str, np.ndarray] = {}

    def client() -> bytes:
        ctx = EncodeContext(rng=np.random.default_rng(1), state=state)
        return compress_with_feedback(update, codec_obj, residual=residual, error_feedback=cfg.error_feedback, ctx=ctx).payload

    payload = client()
    encode_ms = bench_codecs._median_ms(client, reps)
    decode_ms = bench_codecs._median_ms(lambda: decode_update(payload, expected=specs), reps)
    return Cost(setting, codec, encode_ms, decode_ms, train_ms)


def swept_client(cfg: RunConfig, reps: int) -> tuple[dict[str, np.ndarray], float]:
    """A synthetic update with the swept model's shapes, and the median wall time (ms) of one
    terminal's local training in the sweep (terminal 0, the run's epochs, batch and lr)."""
    from fedsplit.learning import config_to_json, task_for, train_local

    task = task_for(config_to_json(replace(cfg, compression={})))
    train_set, _ = task.data.partition(0)
    t = cfg.train
    initial = task.initial_state()

    def train() -> None:
        task.model.load_state_dict(initial)
        train_local(task.model, train_set.x, train_set.y, epochs=t.local_epochs, batch_size=t.batch_size,
                    lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)

    train_ms = bench_codecs._median_ms(train, max(reps, 3))
    rng = np.random.default_rng(0)
    update = {k: (rng.standard_normal(tuple(v.shape)) * 1e-3).astype(np.float32) for k, v in initial.items()}
    return update, train_ms


def measure_costs(codecs: list[str], reps: int, swept_cfg: RunConfig) -> list[Cost]:
    """Codec cost on one core against one core's local training, for two clients.

    ``fedavg-cnn-28x28``: the FedAvg CNN at 28x28 (1,663,370 parameters) against one local epoch
    of a FedAvg MNIST client (600 samples, batch 10), as in ``bench_codecs.py --train``.
    ``as-swept``: the model and local job of this sweep (terminal 0's partition).
    """
    costs = []
    with torch_threads(1):
        clients = {
            BENCH_SETTING: (bench_codecs.cnn_update(), statistics.median(
                bench_codecs.local_train_ms() for _ in range(max(1, min(reps, 3))))),
            SWEPT_SETTING: swept_client(swept_cfg, reps),
        }
        for setting, (update, train_ms) in clients.items():
            params = sum(a.size for a in update.values())
            for codec in codecs:
                cost = codec_cost(setting, codec, update, train_ms, reps)
                costs.append(cost)
                print(
                    f"codec={codec} codec_cost_share={cost.share:.4f} encode_ms={cost.encode_ms:.2f} "
                    f"decode_ms={cost.decode_ms:.2f} local_train_ms={cost.train_ms:.1f} setting={setting} params={params}",
                    flush=True,
                )
    return costs


# -- outputs ------------------------------------------------------------------------------------
def curve_rows(runs: list[CodecRun]) -> list[dict[str, Any]]:
    """One CSV row per (partition, codec, seed, round), with cumulative uplink bytes."""
    rows = []
    for run in (r for cell in cells_of(runs) for r in cell.runs):
        cum_payload = cum_dense = cum_ledger = 0
        for i, acc in enumerate(run.accuracy):
            cum_payload += run.payload_up[i]
            cum_dense += run.dense_up[i]
            cum_ledger += run.ledger_up[i]
            rows.append(
                {
                    "partition": run.partition,
                    "codec": run.codec,
                    "seed": run.seed,
                    "round": i + 1,
                    "accuracy": acc,
                    "loss": run.loss[i],
                    "uplink_payload_bytes": run.payload_up[i],
                    "uplink_dense_bytes": run.dense_up[i],
                    "uplink_ledger_bytes": run.ledger_up[i],
                    "cum_uplink_payload_bytes": cum_payload,
                    "cum_uplink_dense_bytes": cum_dense,
                    "cum_uplink_ledger_bytes": cum_ledger,
                }
            )
    return rows


def summary_rows(runs: list[CodecRun], costs: list[Cost]) -> list[dict[str, Any]]:
    """One CSV row per (partition, codec), over its seeds (see the module docstring)."""
    bench = {c.codec: c.share for c in costs if c.setting == BENCH_SETTING}
    swept = {c.codec: c.share for c in costs if c.setting == SWEPT_SETTING}

    def listed(values: list[float], fmt: str) -> str:
        return " ".join(f"{v:{fmt}}" for v in values)

    rows = []
    for c in cells_of(runs):
        deltas = c.deltas_pp or [float("nan")]
        rows.append({
            "partition": c.partition,
            "codec": c.codec,
            "compression": " ".join(f"{k}={v}" for k, v in CODECS[c.codec].items()),
            "seeds": len(c.runs),
            "seed_list": " ".join(map(str, c.seeds)),
            "ratio": c.ratio,
            "ratio_min": min(c.ratios),
            "ratio_max": max(c.ratios),
            "ledger_ratio": c.ledger_ratio,
            "final_acc_mean": c.final_acc_mean,
            "final_acc_std": _std(c.final_accs),
            "final_acc_min": min(c.final_accs),
            "final_acc_max": max(c.final_accs),
            "final_acc_per_seed": listed(c.final_accs, ".4f"),
            "delta_acc_pp": c.delta_pp,
            "delta_acc_pp_std": _std(deltas),
            "delta_acc_pp_min": min(deltas),
            "delta_acc_pp_max": max(deltas),
            "delta_acc_pp_per_seed": listed(deltas, "+.2f"),
            "last5_acc_mean": c.last5_acc_mean,
            "last5_acc_std": _std(c.last5_accs),
            "last5_acc_min": min(c.last5_accs),
            "last5_acc_max": max(c.last5_accs),
            "best_acc_mean": float(np.mean([max(r.accuracy) for r in c.runs])),
            "uplink_payload_bytes_mean": c.mean_of("payload_up"),
            "uplink_dense_bytes_mean": c.mean_of("dense_up"),
            "uplink_ledger_bytes_mean": c.mean_of("ledger_up"),
            "rejected": sum(r.rejected for r in c.runs),
            "codec_cost_share": bench.get(c.codec, float("nan")),
            "codec_cost_share_as_swept": swept.get(c.codec, float("nan")),
            "wall_s": sum(r.wall_s for r in c.runs),
        })
    return rows


def plot(runs: list[CodecRun], path: Path) -> None:
    """Accuracy vs cumulative uplink bytes (whole messages), one panel per partition: per round, the
    mean over the seeds of the accuracy against the mean cumulative bytes, the seeds' min..max shaded."""
    pyplot = plt()
    cells = cells_of(runs)
    partitions = list(dict.fromkeys(c.partition for c in cells))
    fig, axes = pyplot.subplots(1, len(partitions), figsize=(6.5 * len(partitions), 4.6), squeeze=False)
    for ax, partition in zip(axes[0], partitions):
        seeds = 0
        for cell in (c for c in cells if c.partition == partition):
            rounds = min(len(r.accuracy) for r in cell.runs)
            acc = np.array([r.accuracy[:rounds] for r in cell.runs])
            x = np.mean([np.cumsum(r.ledger_up[:rounds]) for r in cell.runs], axis=0)
            style = "--" if cell.codec == "topk-noef" else "-"
            (line,) = ax.plot(x, acc.mean(axis=0), style, marker=".", label=f"{cell.codec} ({cell.ratio:.0f}x)")
            if len(cell.runs) > 1:
                ax.fill_between(x, acc.min(axis=0), acc.max(axis=0), color=line.get_color(), alpha=0.12, linewidth=0)
            seeds = max(seeds, len(cell.runs))
        ax.set_xscale("log")
        ax.set_xlabel("cumulative uplink bytes (whole messages, all clients)")
        ax.set_ylabel(f"server test accuracy (mean of {seeds} seed(s), min..max shaded)")
        ax.set_title(f"FedAvg CNN on digits, {partition}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot.close(fig)


# -- acceptance ---------------------------------------------------------------------------------
def check_acceptance(runs: list[CodecRun], costs: list[Cost], smoke: bool = False) -> Checks:
    """The issue's acceptance criteria, on the IID runs, over their seeds: accuracies on the mean over
    the seeds, a codec's distance to fp32 as the mean of its per-seed differences to the identity
    run of the same seed (paired); in a smoke run the accuracy and timing claims, which need the
    full rounds and repetitions, are SKIP."""
    checks = Checks(smoke=smoke)
    iid = {c.codec: c for c in cells_of(runs) if c.partition == "iid"}
    base = iid.get(BASELINE)
    if base is None:
        return checks
    rounds = min(len(r.accuracy) for r in base.runs)
    short = f"{rounds} round(s): accuracies far from the plateau the claim is about"
    n = len(base.runs)
    checks.check("baseline converges (identity mean final accuracy > 0.9)", base.final_acc_mean > 0.9,
                 f"final_acc mean={base.final_acc_mean:.4f} over {n} seed(s), spread {_spread(base.final_accs, '.4f')}",
                 full_size=short)

    def per_seed(values: list[float]) -> str:
        return " ".join(f"{v:+.2f}" for v in values)

    def within(codec: str, pp: float) -> None:
        if codec in iid:
            cell = iid[codec]
            d = cell.delta_pp
            checks.check(f"{codec} within {pp} pp of fp32 (mean over seeds)", abs(d) <= pp + 1e-9,
                         f"final_acc mean={cell.final_acc_mean:.4f} vs {base.final_acc_mean:.4f} over {len(cell.runs)} seed(s), "
                         f"paired delta mean={d:+.2f} pp (per seed {per_seed(cell.deltas_pp)}; std {_std(cell.deltas_pp):.2f})",
                         full_size=short)

    def ratio_at_least(codec: str, bar: float) -> None:
        if codec in iid:
            cell = iid[codec]
            checks.check(f"{codec} ratio >= {bar:g}", cell.ratio >= bar,
                         f"ratio={cell.ratio:.1f} (per seed {_spread(cell.ratios, '.1f')})")

    ratio_at_least("topk-ef", 100)
    within("topk-ef", 1.0)
    if "topk-ef" in iid and "topk-noef" in iid:
        ef, noef = iid["topk-ef"], iid["topk-noef"]
        ef_by_seed = {r.seed: r.final_acc for r in ef.runs}
        paired = [100.0 * (r.final_acc - ef_by_seed[r.seed]) for r in noef.runs if r.seed in ef_by_seed]
        gap = float(np.mean(paired)) if paired else float("nan")
        checks.check("topk without error feedback is worse than with it (mean over seeds)", gap < 0,
                     f"final_acc mean {noef.final_acc_mean:.4f} (no EF) vs {ef.final_acc_mean:.4f} (EF), "
                     f"paired no-EF minus EF mean={gap:+.2f} pp (per seed {per_seed(paired)})", full_size=short)
    within("qsgd16", 0.5)
    ratio_at_least("powersgd2", 20)
    within("powersgd2", 1.0)
    mine = [c for c in costs if c.setting == BENCH_SETTING]
    if mine:
        worst = max(mine, key=lambda c: c.share)
        checks.check(f"codec cost < {MAX_COST_SHARE:.0%} of local training "
                     "(FedAvg CNN 28x28, FedAvg MNIST client: 600 samples x 1 epoch, batch 10)", worst.share < MAX_COST_SHARE,
                     f"worst {worst.codec}: {worst.share:.4f} = {worst.encode_ms + worst.decode_ms:.2f} ms "
                     f"/ {worst.train_ms:.1f} ms", full_size="one timed repetition of each codec")
    # not an acceptance bar (the sweep's local job is tiny), so not a check that could fail the run
    mine = [c for c in costs if c.setting == SWEPT_SETTING]
    if mine:
        worst = max(mine, key=lambda c: c.share)
        print(f"info codec cost share as swept (the small local job of this sweep, no bar): worst {worst.codec}: "
              f"{worst.share:.4f} = {worst.encode_ms + worst.decode_ms:.2f} ms / {worst.train_ms:.1f} ms", flush=True)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="seconds: IID only, 2 rounds, 1 seed, identity and topk-ef (unless --rounds / --seeds / --codecs / --partitions)")
    parser.add_argument("--out", type=lambda text: Path(output_folder(text)), default=Path(__file__).parent / "results" / "compression_sweep")
    parser.add_argument("--rounds", type=positive_int, default=None, help=f"default {Settings.rounds} (--smoke: {SMOKE_ROUNDS})")
    parser.add_argument("--seeds", type=positive_int, default=None,
                        help=f"run every cell with seeds 0 .. N-1; the checks are on the mean over them (default {DEFAULT_SEEDS}; --smoke: 1)")
    parser.add_argument("--local-epochs", type=int, default=Settings.local_epochs)
    parser.add_argument("--lr", type=float, default=Settings.lr)
    parser.add_argument("--momentum", type=float, default=Settings.momentum)
    parser.add_argument("--batch-size", type=int, default=Settings.batch_size)
    parser.add_argument("--resolution", type=int, default=Settings.resolution, help="0 = native 8x8")
    parser.add_argument("--codecs", default=None, help=f"comma-separated labels (identity first; default {','.join(CODECS)})")
    parser.add_argument("--partitions", default=None, help=f"comma-separated (default {','.join(PARTITIONS)})")
    parser.add_argument("--cost-reps", type=int, default=5, help="timed repetitions of each codec")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--fresh-engines", action="store_true", help="run each codec through simulate()")
    args = parser.parse_args(argv)

    # --smoke only fills in what was not given (an explicit --rounds / --codecs / --partitions stays)
    rounds = args.rounds or (SMOKE_ROUNDS if args.smoke else Settings.rounds)
    seeds = list(range(args.seeds or (1 if args.smoke else DEFAULT_SEEDS)))
    settings = Settings(rounds=rounds, local_epochs=args.local_epochs, lr=args.lr, momentum=args.momentum,
                        batch_size=args.batch_size, resolution=args.resolution)
    codecs_text = args.codecs or ",".join(SMOKE_CODECS if args.smoke else CODECS)
    codecs = [c.strip() for c in codecs_text.split(",") if c.strip()]
    partitions = [p.strip() for p in (args.partitions or ("iid" if args.smoke else ",".join(PARTITIONS))).split(",") if p.strip()]
    unknown = [c for c in codecs if c not in CODECS] + [p for p in partitions if p not in PARTITIONS]
    if unknown:
        parser.error(f"unknown codec/partition {unknown[0]!r}; allowed: {', '.join([*CODECS, *PARTITIONS])}")
    if codecs[0] != BASELINE:
        codecs = [BASELINE] + [c for c in codecs if c != BASELINE]
    print(
        f"settings: digits {settings.resolution or 8}x{settings.resolution or 8} fedavg-cnn, {settings.terminals} terminals "
        f"(all sampled), rounds={settings.rounds} local_epochs={settings.local_epochs} lr={settings.lr} "
        f"momentum={settings.momentum} batch={settings.batch_size} seeds={len(seeds)} ({seeds[0]}..{seeds[-1]})",
        flush=True,
    )

    start = time.perf_counter()
    runs: list[CodecRun] = []
    with ray_session(args.num_cpus), tempfile.TemporaryDirectory(prefix="compression-sweep-") as workdir:
        with ExitStack() as stack:
            engine = None if args.fresh_engines else stack.enter_context(
                SharedEngine(run_config(settings, partitions[0], {}, Path(workdir)), Path(workdir)))
            for seed in seeds:
                for partition in partitions:
                    for run in run_partition(replace(settings, seed=seed), partition, codecs, Path(workdir), engine):
                        run.seed = seed  # (the run's own, whatever ran it)
                        runs.append(run)
    for cell in cells_of(runs):
        print_cell_line(cell)
    swept_cfg = run_config(settings, partitions[0], {}, args.out)
    costs = measure_costs(codecs, 1 if args.smoke else args.cost_reps, swept_cfg)
    write_csv(curve_rows(runs), args.out / "curves.csv")
    write_csv(summary_rows(runs, costs), args.out / "summary.csv")
    plot(runs, args.out / "accuracy_vs_uplink.png")
    written = [shown_path(args.out / name) for name in ("curves.csv", "summary.csv", "accuracy_vs_uplink.png")]
    print(f"wrote {written[0]}, {written[1]} and {written[2]} "
          f"in {time.perf_counter() - start:.1f} s", flush=True)
    checks = check_acceptance(runs, costs, smoke=args.smoke)
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    from fedsplit.process_exit import exit_now

    exit_now(main())  # skips the interpreter teardown, where Ray's destructors can hang
