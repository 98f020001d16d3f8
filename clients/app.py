"""fedsplit's ClientApp: one emulated (or real) terminal's train / evaluate / query handlers.

The same ClientApp runs on fedsplit's engine, on Flower's simulation engine and under Flower's
deployment engine. It learns the run's configuration from the simulation that built it
(:func:`make_client_app`), else from the run config (``context.run_config["config-file"]`` and
``["overrides"]``, ``;``-separated, the ``flwr run`` path), and its own terminal from
``context.node_config["partition-id"]``.

Split learning's terminal side answers ``train.split`` messages (:mod:`fedsplit.clients.split_client`).

Replies follow Flower's conventions: ``"arrays"`` (weights: all of them, or only the trainable ones
under ``transfer.trainable``, :mod:`fedsplit.models.freezing`), ``"metrics"`` with ``"num-examples"``,
plus ``"flops"`` (FLOPs executed, for the simulated clock) and ``"partition-id"``; on a CUDA
device also ``"gpu-mem-bytes"``, the peak CUDA memory the message allocated (bytes).

Device: every handler computes on :func:`_device` (the model, the batches, the labels, and split
learning's parts and activations); it is the one place that decides, so a test can point it at
another device.
"""

from __future__ import annotations

import functools
import itertools
import warnings
import weakref
import zlib
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.clients.measure_mod import measure_mod
from fedsplit.clients.privacy_mod import local_trainer
from fedsplit.clients.secagg_client import STAGE_ACTIONS, handle_secagg_stage
from fedsplit.clients.split_client import SPLIT_ACTION, handle_split
from fedsplit.config import load_config
from fedsplit.data import FederatedData
from fedsplit.learning import Task, config_to_json, evaluate, task_for
from fedsplit.learning.task import provide_data
from fedsplit.records import record_of

def _config_json(context: Context, config_json: str | None) -> str:
    if config_json is not None:
        return config_json
    run_config = context.run_config
    path = str(run_config.get("config-file", "")) or None
    overrides = [o for o in str(run_config.get("overrides", "")).split(";") if o.strip()]
    cache_key = f"{path}|{overrides}"
    cached = _RUN_CONFIG_JSON.get(cache_key)
    if cached is None:
        cached = config_to_json(load_config(path, overrides))
        _RUN_CONFIG_JSON[cache_key] = cached
    return cached


_RUN_CONFIG_JSON: dict[str, str] = {}


def _partition_id(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _round_seed(seed: int, partition_id: int, server_round: int) -> int:
    """A per-(run, terminal, round) seed, stable across processes (no Python hash randomisation)."""
    return zlib.crc32(f"{seed}:{partition_id}:{server_round}".encode())


def _device() -> torch.device:
    """The accelerator this process was given (Ray sets CUDA_VISIBLE_DEVICES per actor), else CPU.

    The only function that chooses the device: FedAvg's handlers and split learning's terminal
    (:func:`fedsplit.clients.split_client.terminal_device`) both ask it.
    """
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


Handler = Callable[[Message, Context], Message]


def with_gpu_memory(handler: Handler) -> Handler:
    """``handler`` whose reply, on a CUDA device, carries ``"gpu-mem-bytes"`` in its metrics.

    The value is :func:`torch.cuda.max_memory_allocated` in bytes, its peak reset before the
    message: the most CUDA memory the terminal held while handling this message. Off CUDA, and
    for error replies or replies without a ``"metrics"`` record, the reply is unchanged.
    """

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        device = _device()
        if device.type != "cuda":
            return handler(msg, context)
        torch.cuda.reset_peak_memory_stats(device)
        reply = handler(msg, context)
        if not reply.has_error() and "metrics" in reply.content.metric_records:
            reply.content.metric_records["metrics"]["gpu-mem-bytes"] = int(torch.cuda.max_memory_allocated(device))
        return reply

    return wrapped


BATCHNORM_LOCAL_STATE = "fedsplit.transfer.batchnorm-local"
"""``Context.state`` record of a terminal's own BatchNorm statistics (``transfer.batchnorm = "local"``)."""


def _load_global(task: Task, msg: Message, context: Context | None = None) -> torch.device:
    """Load the received model into ``task.model`` on :func:`_device`.

    The message must hold exactly the tensors that travel (:attr:`Task.travelling`: all of them,
    or the trainable ones under freezing); the rest comes from the pretrained model, and a
    terminal's own BatchNorm statistics from its ``Context.state`` (``batchnorm = "local"``).
    Anything else raises :class:`fedsplit.learning.task.TravellingKeysError` (an error reply).
    """
    device = _device()
    if _PLACED.get(task.model) != device:  # once per process: Module.to walks every tensor even when none moves
        if any(t.device != device for t in itertools.chain(task.model.parameters(), task.model.buffers())):
            task.model.to(device)
        _PLACED[task.model] = device
    arrays = record_of(msg.content, "arrays", ArrayRecord)
    if arrays is None:
        raise KeyError("the message carries no ArrayRecord 'arrays'")
    views = record_views(arrays)
    task.check_travelling(list(views))
    with warnings.catch_warnings():  # read-only views: load_state_dict copies them into the model
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        state = {key: torch.from_numpy(view) for key, view in views.items()}
        own = None if context is None else record_of(context.state, BATCHNORM_LOCAL_STATE, ArrayRecord)
        local = {} if own is None else {k: torch.from_numpy(v) for k, v in record_views(own).items()}
    load_state(task.model, task.full_state(state, local))
    return device


_PLACED: "weakref.WeakKeyDictionary[torch.nn.Module, torch.device]" = weakref.WeakKeyDictionary()
"""The device :func:`_load_global` put each model on (only it moves a task's model)."""
_PLAIN_LOAD: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def load_state(model: torch.nn.Module, state: "dict[str, torch.Tensor]") -> None:
    """``model.load_state_dict(state, strict=True)``, with the same result, at a fraction of its cost.

    When ``state`` has exactly the model's keys and shapes and no module customises loading (load
    hooks, an own ``_load_from_state_dict`` other than BatchNorm's, which only differs for missing
    keys), each tensor is copied straight into the model's own, under ``no_grad`` as
    ``load_state_dict`` does: it walks the modules and their hooks for every tensor, about 40 us of
    Python a message for the 64-64-10 MLP. Anything else goes to ``load_state_dict``, which raises
    its usual error for a missing, unexpected or misshapen tensor. Whether a model's modules
    customise loading is looked at once, at its first load.
    """
    own = model.state_dict(keep_vars=True)
    plain = _PLAIN_LOAD.get(model)
    if plain is None:
        plain = _PLAIN_LOAD[model] = all(_loads_plainly(m) for m in model.modules())
    if not plain or own.keys() != state.keys() or any(own[k].shape != v.shape for k, v in state.items()):
        model.load_state_dict(state, strict=True)
        return
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)


def _loads_plainly(module: torch.nn.Module) -> bool:
    """Whether ``load_state_dict`` does nothing for ``module`` but copy its tensors (given every key)."""
    own_loader = type(module)._load_from_state_dict
    return (
        not module._load_state_dict_pre_hooks
        and not module._load_state_dict_post_hooks
        and (own_loader is torch.nn.Module._load_from_state_dict or isinstance(module, torch.nn.modules.batchnorm._NormBase))
    )


def handle_train(msg: Message, context: Context, config_json: str | None = None) -> Message:
    """Train the received global model on this terminal's partition."""
    task = task_for(_config_json(context, config_json))
    pid = _partition_id(context)
    config = record_of(msg.content, "config", ConfigRecord) or ConfigRecord()
    server_round = int(config.get("server-round", 0))
    train_set, _ = task.data.partition(pid)
    device = _load_global(task, msg, context)
    t, plan, teacher = task.cfg.train, task.plan, task.teacher()
    result = local_trainer(task, pid, context)(  # train_local, or DP-SGD / label flipping (fedsplit.privacy)
        task.model,
        train_set.x.to(device),
        train_set.y.to(device),
        epochs=int(config.get("local-epochs", t.local_epochs)),
        batch_size=int(config.get("batch-size", t.batch_size)),
        lr=float(config.get("lr", t.lr)),
        momentum=t.momentum,
        weight_decay=t.weight_decay,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
        seed=_round_seed(task.cfg.seed, pid, server_round),
        teacher=teacher.to(device) if teacher is not None else None,
        temperature=task.cfg.transfer.temperature,
        alpha=task.cfg.transfer.alpha,
        batchnorm_eval=plan is not None and plan.batchnorm == "frozen",
    )
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "flops": result.flops,
            "train-loss": result.loss if result.num_examples else 0.0,
            "partition-id": pid,
        }
    )
    trained = task.model.state_dict()
    if plan is not None and plan.local:  # kept by this terminal, never sent
        context.state.array_records[BATCHNORM_LOCAL_STATE] = array_record_from_state({k: trained[k] for k in plan.local})
    arrays = array_record_from_state({k: trained[k] for k in task.travelling})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, config_json: str | None = None) -> Message:
    """Evaluate the received global model on this terminal's validation split."""
    task = task_for(_config_json(context, config_json))
    pid = _partition_id(context)
    _, val_set = task.data.partition(pid)
    device = _load_global(task, msg, context)
    result = evaluate(task.model, val_set.x.to(device), val_set.y.to(device))
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "flops": result.flops,
            "eval-loss": result.loss if result.num_examples else 0.0,
            "eval-acc": result.accuracy if result.num_examples else 0.0,
            "partition-id": pid,
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


#: Node config key of a deployed node's device class, and the query reply's record that echoes it.
DEVICE_PROFILE_KEY = "device-profile"
NODE_RECORD = "fedsplit.node"


def handle_query(msg: Message, context: Context) -> Message:
    """Tell the server which terminal this node is (used to map node ids to terminals) and, when
    its node config declares one (``device-profile``), which device class it is."""
    content = RecordDict({"metrics": MetricRecord({"partition-id": _partition_id(context)})})
    declared = context.node_config.get(DEVICE_PROFILE_KEY)
    if declared is not None:
        content[NODE_RECORD] = ConfigRecord({DEVICE_PROFILE_KEY: str(declared)})
    return Message(content, reply_to=msg)


def make_client_app(mods: list | None = None, config_json: str | None = None, data: FederatedData | None = None) -> ClientApp:
    """Build fedsplit's ClientApp.

    Parameters
    ----------
    mods : list, optional
        Flower mods, outermost first (default: :func:`default_mods`); the measuring mod
        (:func:`fedsplit.clients.measure_mod.measure_mod`, a no-op unless the node config asks
        for it) always goes around them.
    config_json : str, optional
        The run's resolved configuration (:func:`fedsplit.learning.config_to_json`). Simulations
        pass it here; deployed ClientApps read ``config-file``/``overrides`` from the run config.
    data : FederatedData, optional
        The run's data as the caller built it from ``config_json`` (with ``config_json`` only):
        it travels with the app, and a process the app is sent to (an actor) builds its task on
        it (:func:`fedsplit.learning.task.provide_data`) instead of loading and partitioning the
        dataset again, seconds of imports (scikit-learn, flwr-datasets) on a small machine. Best
        with :meth:`~fedsplit.data.FederatedData.with_drawn_partitions`, which that process then
        reads without flwr-datasets.
    """
    if data is not None and config_json is None:
        raise ValueError("make_client_app: data is the data of config_json, which was not given")
    # outermost: a measuring terminal (node config profile = "measure") times all the rest
    outer = [measure_mod] if data is None else [_data_mod(config_json, data), measure_mod]
    app = ClientApp(mods=[*outer, *(default_mods(config_json) if mods is None else mods)])
    app.reports_flops = True  # replies carry exact "flops": fedsplit's engine need not meter them

    def train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, config_json)

    def evaluate_(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, config_json)

    def split(msg: Message, context: Context) -> Message:
        return handle_split(msg, context, task_for(_config_json(context, config_json)), _round_seed)

    app.train()(with_gpu_memory(train))
    app.train(SPLIT_ACTION)(with_gpu_memory(split))
    for action in STAGE_ACTIONS.values():  # secure aggregation's stages without training
        app.train(action)(handle_secagg_stage)
    app.evaluate()(with_gpu_memory(evaluate_))
    app.query()(handle_query)
    return app


def _data_mod(config_json: str, data: FederatedData) -> Callable[[Message, Context, Callable], Message]:
    """A mod that, before this process first builds the task of ``config_json``, provides it
    ``data`` (:func:`fedsplit.learning.task.provide_data`); the messages are untouched."""

    def provide_run_data(msg: Message, context: Context, call_next: Handler) -> Message:
        provide_data(config_json, data)  # a dict lookup once the task is built
        return call_next(msg, context)

    return provide_run_data


def default_mods(config_json: str | None = None) -> list:
    """The mods installed by default, outermost first, each a no-op unless the run asks for it:
    secure aggregation's masked upload (when the train message carries Flower's SecAgg+ record;
    outermost, so it masks what the others produced), update compression (when the server's
    train config carries a codec spec), Byzantine attack emulation (``attack.*``) and
    differential privacy (``privacy.*``).

    ``config_json`` is the run's configuration as :func:`make_client_app` got it (None: the
    run config's, read per message like the handlers do).
    """
    from fedsplit.clients.attack_mod import make_attack_mod
    from fedsplit.clients.compression_mod import compression_mod
    from fedsplit.clients.privacy_mod import make_privacy_mod
    from fedsplit.clients.secagg_client import make_secagg_mod

    return [make_secagg_mod(config_json), compression_mod, make_attack_mod(config_json), make_privacy_mod(config_json)]


client_app = make_client_app()
