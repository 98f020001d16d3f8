"""The typed configuration of a fedsplit run.

Every field carries a one-line description (``fedsplit simulate --help`` lists them) and, where
it has one, its unit. Values are validated by :mod:`fedsplit.config.loader`; cross-field rules
(profiles that exist, a population that is not empty, ...) live in :func:`validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any


def doc(text: str, **rules: Any) -> dict[str, Any]:
    """Field metadata: a description plus optional rules (``gt``, ``ge``, ``le``, ``choices``)."""
    return {"doc": text, **rules}


DEFAULT_POPULATION: dict[str, int] = {
    "raspberry-pi-4": 4,
    "smartphone-mid": 3,
    "jetson-nano": 2,
    "laptop": 1,
}

#: Flower strategies a run can name in ``strategy.name``: the one list. Each is its Flower class's
#: name in lower case; ``strategies/registry.py`` maps the names to the classes.
STRATEGY_NAMES: tuple[str, ...] = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedmedian",
    "fedtrimmedavg",
    "krum",
    "multikrum",
    "bulyan",
)

ENGINES: tuple[str, ...] = ("fedsplit", "flower", "serial")
TRANSPORTS: tuple[str, ...] = ("ray", "channel")  # how fedsplit's engine reaches its actors (engine.transport)
DEFAULT_TRANSPORT = "channel"  # measured against "ray": see simulation/actor_channel.py

#: What the server does with a round that kept fewer than ``faults.min_clients`` updates.
TOO_FEW_POLICIES: tuple[str, ...] = ("stop", "retry")

TRAINING_MODES: tuple[str, ...] = ("fl", "sl-vanilla", "sl-ushape", "splitfed-v1", "splitfed-v2", "fedbuff", "fedasync", "gossip")

#: Client selection of the FedAvg family (``strategy.selection``): all sampled terminals, or FedCS.
SELECTIONS: tuple[str, ...] = ("all", "fedcs")

#: Local work per terminal (``strategy.local_work``): the configured epochs, or adaptive (FedNova).
LOCAL_WORK: tuple[str, ...] = ("fixed", "adaptive")

#: Device graphs of gossip training (``orchestration.graph``).
GOSSIP_GRAPHS: tuple[str, ...] = ("ring", "regular", "complete", "edges")


@dataclass
class DataConfig:
    """Dataset and how it is split over the terminals."""

    name: str = field(default="digits", metadata=doc("dataset: a name of fedsplit.data.DATASETS (an unknown one is refused with the list)"))
    root: str = field(default="", metadata=doc("directory of on-disk datasets (torchvision layout); empty = ./data"))
    download: bool = field(default=False, metadata=doc("download a torchvision dataset into root if missing"))
    partitioner: str = field(default="iid", metadata=doc("how data is split: a name of fedsplit.data.PARTITIONERS (an unknown one is refused with the list)"))
    alpha: float = field(default=0.5, metadata=doc("Dirichlet concentration for partitioner=dirichlet (smaller = more skew)", gt=0))
    shards_per_client: int = field(default=2, metadata=doc("classes per client for partitioner=shards", ge=1))
    val_fraction: float = field(default=0.1, metadata=doc("fraction of each client's data kept for client-side evaluation", ge=0, lt=1))
    resolution: int = field(default=0, metadata=doc("resize inputs to resolution x resolution pixels (0 = native)", ge=0))
    samples_per_client: int = field(default=0, metadata=doc("synthetic only: generate this many samples per client lazily (0 = one shared pool)", ge=0))
    classes: str = field(default="", metadata=doc("keep only these classes, relabelled 0..k-1 in the order given: '5-9' or '0,2,4' (empty = all)"))


@dataclass
class ModelConfig:
    """The model trained by the federation."""

    name: str = field(default="cnn", metadata=doc("mlp | cnn (compact residual) | fedavg-cnn | mobilenet | tv:<torchvision constructor>"))
    hidden: int = field(default=64, metadata=doc("hidden width of the MLP (units)", ge=1))
    width: float = field(default=1.0, metadata=doc("width multiplier of cnn / mobilenet", gt=0))
    pretrained: str = field(default="", metadata=doc("local checkpoint to start from: a `fedsplit pretrain` file or a plain state_dict (e.g. torchvision weights on disk); a head of another class count is re-initialised (empty = random init; nothing is downloaded)"))


@dataclass
class TrainConfig:
    """Local training on each terminal."""

    local_epochs: int = field(default=2, metadata=doc("local epochs per round", ge=1))
    batch_size: int = field(default=32, metadata=doc("local mini-batch size (samples)", ge=1))
    lr: float = field(default=0.05, metadata=doc("local SGD learning rate", gt=0))
    momentum: float = field(default=0.9, metadata=doc("local SGD momentum", ge=0, lt=1))
    weight_decay: float = field(default=0.0, metadata=doc("local SGD weight decay", ge=0))


@dataclass
class StrategyConfig:
    """Aggregation: a Flower strategy by name, or a user's by import path."""

    name: str = field(default="fedavg", metadata=doc(f"{' | '.join(STRATEGY_NAMES)} | package.module:Class (a flwr Strategy subclass)"))
    fraction_train: float = field(default=1.0, metadata=doc("fraction of online terminals sampled for training each round", gt=0, le=1))
    fraction_evaluate: float = field(default=0.0, metadata=doc("fraction of online terminals sampled for client-side evaluation (0 = off)", ge=0, le=1))
    min_train_nodes: int = field(default=1, metadata=doc("minimum terminals sampled for training", ge=1))
    params: dict[str, Any] = field(default_factory=dict, metadata=doc("extra keyword arguments of the strategy, e.g. {proximal_mu = 0.1}"))
    selection: str = field(default="all", metadata=doc("all (the strategy's sample) | fedcs (of the sample, those predicted to finish within clock.round_deadline_s, fastest first)", choices=SELECTIONS))
    local_work: str = field(default="fixed", metadata=doc("fixed (train.local_epochs everywhere) | adaptive (per-terminal epochs so all finish together, FedNova averaging)", choices=LOCAL_WORK))
    max_local_epochs: int = field(default=8, metadata=doc("local_work = adaptive: most epochs a terminal is given in a round", ge=1))
    resource_budget_s: float = field(default=0.0, metadata=doc("local_work = adaptive: total simulated seconds the run may use; >0 lets a controller (Wang et al. 2019) choose the round's local epochs, and the run ends when no further round fits (0 = no budget)", ge=0))
    resource_budget_j: float = field(default=0.0, metadata=doc("local_work = adaptive: total joules (terminals + edge server) the run may use, as resource_budget_s (0 = no budget; at most one of the two)", ge=0))


#: ``privacy.mode``: no DP, DP-SGD on every terminal, or noise on the aggregate (Flower's wrappers).
PRIVACY_MODES: tuple[str, ...] = ("off", "local", "central")

#: ``privacy.clipping`` of central DP: where updates are clipped, to a fixed or an adaptive norm.
CENTRAL_DP_CLIPPING: tuple[str, ...] = ("server-fixed", "client-fixed", "server-adaptive", "client-adaptive")

#: ``privacy.accountant``: Opacus's accountants by their Opacus names.
DP_ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")

#: ``attack.kind``: no attack, the update attacks (fedsplit.privacy.attacks), label flipping.
ATTACK_KINDS: tuple[str, ...] = ("none", "signflip", "scale", "noise", "labelflip")


@dataclass
class PrivacyConfig:
    """Differential privacy: local DP-SGD (Opacus) on the terminals, or central DP on the aggregate."""

    mode: str = field(default="off", metadata=doc("off | local (DP-SGD with Opacus on every terminal; epsilon per terminal, cumulative over rounds) | central (Flower's DP wrappers: updates clipped, Gaussian noise on the aggregate)", choices=PRIVACY_MODES))
    noise_multiplier: float = field(default=0.0, metadata=doc("noise std over the clipping norm: local = per DP-SGD step, central = per aggregate (0 = computed from epsilon)", ge=0))
    max_grad_norm: float = field(default=1.0, metadata=doc("clipping norm (L2, weight units): local = of each per-sample gradient, central = of each terminal's update (the initial one with adaptive clipping)", gt=0))
    epsilon: float = field(default=0.0, metadata=doc("privacy budget for the whole run: with noise_multiplier = 0 the noise that spends exactly this over all rounds; a local terminal stops training before a round would exceed it (0 = no budget)", ge=0))
    delta: float = field(default=1e-5, metadata=doc("delta of the reported (epsilon, delta)", gt=0, lt=1))
    accountant: str = field(default="rdp", metadata=doc("Opacus accountant: rdp | prv", choices=DP_ACCOUNTANTS))
    clipping: str = field(default="server-fixed", metadata=doc("central: server-fixed | client-fixed | server-adaptive | client-adaptive (Flower's DifferentialPrivacy*Clipping wrappers; client-* clip on the terminal with Flower's clipping mods)", choices=CENTRAL_DP_CLIPPING))
    target_quantile: float = field(default=0.5, metadata=doc("central adaptive clipping: fraction of updates left unclipped the norm tracks", ge=0, le=1))
    clip_lr: float = field(default=0.2, metadata=doc("central adaptive clipping: learning rate of the clipping norm", gt=0))
    clipped_count_stddev: float = field(default=0.0, metadata=doc("central adaptive clipping: noise std of the clipped count (0 = Flower's default, sampled terminals / 20)", ge=0))


@dataclass
class AttackConfig:
    """Byzantine terminals: a seeded fraction of the terminals lies about its update."""

    kind: str = field(default="none", metadata=doc("none | signflip (sends global - k * update) | scale (global + k * update) | noise (global + N(0, noise_std^2)) | labelflip (trains on labels c -> classes - 1 - c)", choices=ATTACK_KINDS))
    fraction: float = field(default=0.2, metadata=doc("fraction of the terminals that attack (rounded half up; chosen with the run's seed)", ge=0, le=1))
    k: float = field(default=5.0, metadata=doc("signflip / scale: multiplier of the honest update", gt=0))
    noise_std: float = field(default=1.0, metadata=doc("noise: standard deviation of the values sent instead of the update (weight units)", gt=0))


@dataclass
class DefenceConfig:
    """Norm clipping and rejection of updates before aggregation (on top of any strategy.name)."""

    clip_norm: float = field(default=0.0, metadata=doc("clip every update (local - global, L2 over float tensors) to this norm (0 = off)", ge=0))
    clip_factor: float = field(default=0.0, metadata=doc("clip every update to this multiple of the round's median update norm (0 = off)", ge=0))
    reject_norm: float = field(default=0.0, metadata=doc("reject updates whose norm exceeds this (ledger status rejected; 0 = off)", ge=0))
    reject_factor: float = field(default=0.0, metadata=doc("reject updates whose norm exceeds this multiple of the round's median update norm (0 = off)", ge=0))


@dataclass
class SecAggConfig:
    """Secure aggregation (SecAgg+ with Flower's primitives): the server sees masked updates and their sum only."""

    enabled: bool = field(default=False, metadata=doc("aggregate with SecAgg+ (training.mode = fl with a FedAvg-family strategy): terminals upload masked quantized updates; the server unmasks only their weighted sum"))
    num_shares: int = field(default=0, metadata=doc("shares of each terminal's secrets = its neighbourhood, itself included (0 = every sampled terminal, SecAgg; k >= 3 = SecAgg+ with k-1 neighbours)", ge=0))
    threshold: int = field(default=0, metadata=doc("shares that reconstruct a terminal's secrets (>= 2; 0 = a majority, shares // 2 + 1): up to shares - threshold neighbours may drop out, and fewer than threshold colluding terminals learn nothing", ge=0))
    clipping_range: float = field(default=8.0, metadata=doc("weighted update values are clipped to [-clipping_range, clipping_range] before quantization (weight units)", gt=0))
    quantization_range: int = field(default=4194304, metadata=doc("integer levels over the clipping interval (default 2**22); the masks are modulo 2**32, so at most 2**32 // quantization_range terminals per round", ge=2))
    max_weight: float = field(default=0.0, metadata=doc("largest num-examples a terminal reports; updates are weighted by num-examples / max_weight before quantization (0 = the largest terminal training set)", ge=0))


@dataclass
class ClockConfig:
    """Simulated time of the synchronous protocol."""

    round_deadline_s: float = field(default=0.0, metadata=doc("round deadline in simulated seconds; slower clients are stragglers, dropped from aggregation (0 = none)", ge=0))
    server_profile: str = field(default="edge-server", metadata=doc("device profile of the edge server whose work (aggregation, server model parts) goes on the clock"))


@dataclass
class SplitConfig:
    """Split learning (training.mode = sl-* or splitfed-*)."""

    cut: str = field(default="auto", metadata=doc("last block on the terminal (name or index; 'a,b' = the two cuts of sl-ushape), or auto: the cut with the least predicted time per epoch"))
    noise_std: float = field(default=0.0, metadata=doc("std of Gaussian noise terminals add to the activations they send (0 = none)", ge=0))


@dataclass
class OrchestrationConfig:
    """Asynchronous (training.mode = fedbuff | fedasync) and decentralized (gossip) training."""

    concurrency: int = field(default=10, metadata=doc("fedbuff/fedasync: terminals training at once (in flight)", ge=1))
    buffer_size: int = field(default=5, metadata=doc("fedbuff: updates aggregated per step (K)", ge=1))
    staleness_exponent: float = field(default=0.5, metadata=doc("weight of an update s versions old: (1 + s) ** -exponent", ge=0))
    server_lr: float = field(default=1.0, metadata=doc("fedbuff: server learning rate on the averaged update", gt=0))
    mixing_alpha: float = field(default=0.6, metadata=doc("fedasync: mixing weight of a fresh update", gt=0, le=1))
    graph: str = field(default="ring", metadata=doc("gossip: device graph: ring | regular (random, degree graph_degree) | complete | edges (orchestration.edges)", choices=GOSSIP_GRAPHS))
    graph_degree: int = field(default=3, metadata=doc("gossip: degree of the random regular graph", ge=1))
    edges: str = field(default="", metadata=doc("gossip with graph = edges: terminal pairs 'a-b,c-d,...'"))
    gossip: str = field(default="dpsgd", metadata=doc("gossip: dpsgd (average with all neighbours) | gosgd (with one random neighbour)", choices=("dpsgd", "gosgd")))


@dataclass
class TrainingConfig:
    """The training protocol and the server loop's cadence."""

    mode: str = field(
        default="fl",
        metadata=doc(
            "fl (federated averaging family: strategy.*) | sl-vanilla | sl-ushape (labels stay on the terminal) | "
            "splitfed-v1 | splitfed-v2 (split learning: split.*) | fedbuff | fedasync (asynchronous: orchestration.*) | "
            "gossip (decentralized: orchestration.*)",
            choices=TRAINING_MODES,
        ),
    )
    eval_every: int = field(default=1, metadata=doc("evaluate the global model on the server's test set every this many rounds, and after the last (0 = never)", ge=0))
    checkpoint_every: int = field(default=0, metadata=doc("save checkpoints/round-<r>.pt every this many rounds (0 = final model only)", ge=0))
    max_empty_rounds: int = field(default=2, metadata=doc("stop with an error after this many consecutive rounds that aggregate nothing (0 = never)", ge=0))
    resume_every: int = field(default=1, metadata=doc("write checkpoints/resume.pt (everything `fedsplit simulate --resume RUN_DIR` continues from) every this many rounds, atomically (0 = never)", ge=0))


@dataclass
class FaultsConfig:
    """Injected terminal faults (fedsplit and serial engines), and the fewest updates a round needs."""

    crash_rate: float = field(default=0.0, metadata=doc("probability that a terminal's ClientApp raises in a round (drawn per terminal, round and attempt from faults.seed)", ge=0, le=1))
    kill_rate: float = field(default=0.0, metadata=doc("probability that the process running a terminal dies in a round; the engine replaces the actor (crash_rate + kill_rate <= 1)", ge=0, le=1))
    seed: int = field(default=0, metadata=doc("seed of the fault draws", ge=0, lt=2**32))
    min_clients: int = field(default=0, metadata=doc("fewest updates a round must keep (terminals whose train exchanges all succeeded; 0 = no minimum)", ge=0))
    too_few: str = field(default="stop", metadata=doc("a round that kept fewer than min_clients updates: stop (the run exits with status 3 and says why) | retry (the round again from the same global model, faults drawn afresh)", choices=TOO_FEW_POLICIES))
    max_retries: int = field(default=2, metadata=doc("too_few = retry: attempts after the first before the run stops", ge=0))


#: BatchNorm statistics under freezing (``transfer.batchnorm``).
BATCHNORM_MODES: tuple[str, ...] = ("frozen", "local", "global")


@dataclass
class TransferConfig:
    """Transfer learning (freezing a pretrained backbone) and knowledge distillation."""

    trainable: str = field(default="all", metadata=doc("what trains and travels: all | last:N (the last N blocks with parameters) | comma-separated module names (e.g. 'head,stages.2'); the rest stays as model.pretrained gave it and is never sent"))
    batchnorm: str = field(default="frozen", metadata=doc("with trainable != all: frozen (BatchNorm uses the pretrained statistics, eval mode; never sent) | local (each terminal keeps its own statistics in its state; never sent) | global (statistics travel with the trainable tensors and are averaged like them)", choices=BATCHNORM_MODES))
    teacher: str = field(default="", metadata=doc("checkpoint of a teacher model (`fedsplit pretrain` file): terminals add the KL term to its soft labels in local training (empty = no distillation)"))
    temperature: float = field(default=2.0, metadata=doc("distillation temperature T (softmax(logits / T) of teacher and student)", gt=0))
    alpha: float = field(default=0.5, metadata=doc("weight of the distillation term: loss = (1 - alpha) * CE + alpha * T^2 * KL", ge=0, le=1))


@dataclass
class EngineConfig:
    """Where ClientApps run."""

    name: str = field(default="fedsplit", metadata=doc("fedsplit (Ray actors with per-device budgets) | flower (Flower's simulation engine) | serial (fedsplit's engine without Ray: every message in this process, one after another)", choices=ENGINES))
    ray_address: str = field(default="", metadata=doc("attach to an existing Ray cluster at this address (empty = start a local one)"))
    num_cpus: int = field(default=0, metadata=doc("CPUs given to a local Ray (0 = all of the machine)", ge=0))
    actors_per_device: int = field(default=0, metadata=doc("actors per device class (0 = as many as its budget fits)", ge=0))
    transport: str = field(default=DEFAULT_TRANSPORT, metadata=doc("how the engine's batches reach its actors: channel (a Unix socket to each actor on this machine, Ray calls to others and for rounds whose model goes through Ray's object store: less of the driver's CPU per batch) | ray (Ray calls only)", choices=TRANSPORTS))


@dataclass
class DeployConfig:
    """Runs on real devices (Flower's deployment engine: `fedsplit deploy run`, `flwr run`)."""

    min_nodes: int = field(default=0, metadata=doc("SuperNodes that must be connected before the first round (0 = one per terminal); a terminal whose SuperNode connects later is offline until the round after it joined", ge=0))
    wait_s: float = field(default=300.0, metadata=doc("real seconds to wait for min_nodes SuperNodes before the run stops with an error", gt=0))


@dataclass
class RunConfig:
    """A fedsplit simulation."""

    seed: int = field(default=0, metadata=doc("seed of data, model init, sampling and availability", ge=0, lt=2**32))
    rounds: int = field(default=10, metadata=doc("federated rounds", ge=1))
    out_dir: str = field(default="runs", metadata=doc("parent directory of run folders"))
    run_name: str = field(default="", metadata=doc("run folder name (empty = timestamp)"))
    devices: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_POPULATION), metadata=doc("population: device profile -> number of terminals"))
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict, metadata=doc("user device profiles: name -> fields (optionally base = '<builtin>')"))
    data: DataConfig = field(default_factory=DataConfig, metadata=doc("dataset and partitioning"))
    model: ModelConfig = field(default_factory=ModelConfig, metadata=doc("model"))
    train: TrainConfig = field(default_factory=TrainConfig, metadata=doc("local training"))
    strategy: StrategyConfig = field(default_factory=StrategyConfig, metadata=doc("aggregation strategy"))
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig, metadata=doc("differential privacy"))
    attack: AttackConfig = field(default_factory=AttackConfig, metadata=doc("emulated Byzantine terminals"))
    defence: DefenceConfig = field(default_factory=DefenceConfig, metadata=doc("update norm clipping and rejection"))
    secagg: SecAggConfig = field(default_factory=SecAggConfig, metadata=doc("secure aggregation"))
    clock: ClockConfig = field(default_factory=ClockConfig, metadata=doc("simulated clock"))
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata=doc("training protocol and server loop"))
    split: SplitConfig = field(default_factory=SplitConfig, metadata=doc("split learning"))
    orchestration: OrchestrationConfig = field(default_factory=OrchestrationConfig, metadata=doc("asynchronous and decentralized training"))
    engine: EngineConfig = field(default_factory=EngineConfig, metadata=doc("execution engine"))
    deploy: DeployConfig = field(default_factory=DeployConfig, metadata=doc("deployment on real devices"))
    faults: FaultsConfig = field(default_factory=FaultsConfig, metadata=doc("injected faults and the minimum of updates per round"))
    transfer: TransferConfig = field(default_factory=TransferConfig, metadata=doc("transfer learning and distillation"))
    compression: dict[str, Any] = field(default_factory=dict, metadata=doc("update compression, e.g. {uplink = 'topk', density = 0.01, error_feedback = true}"))
    progress: bool = field(default=True, metadata=doc("show a progress bar and the closing table"))

    @property
    def num_terminals(self) -> int:
        """Total number of emulated terminals in the population."""
        return sum(self.devices.values())


def iter_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dict[str, Any]]]:
    """Flatten a config dataclass into ``(dotted_name, default, metadata)`` rows."""
    rows: list[tuple[str, Any, dict[str, Any]]] = []
    instance = cls()
    for f in fields(cls):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            rows.extend(iter_fields(type(value), prefix + f.name + "."))
        else:
            rows.append((prefix + f.name, value, dict(f.metadata)))
    return rows
