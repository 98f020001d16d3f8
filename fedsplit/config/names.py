"""Names a configuration refers to, checked against the rooms that own them.

A run configuration names things other rooms define: a dataset and a partitioner
(:mod:`fedsplit.data`), a model (:mod:`fedsplit.models`, or a ``torchvision.models``
constructor) and a strategy (Flower's, by a name of :data:`~fedsplit.config.schema.STRATEGY_NAMES`,
or the user's, by import path). Each check here asks the owning room for its list, so no list is
written twice, and raises :class:`~fedsplit.config.errors.ConfigError` with one line naming the
field, the value and what is allowed. Everything is checked without Flower and without Ray; the
rooms are imported only when a configuration is validated.

A user strategy (``package.module:Class``) is checked by form only: importing it is left to the
process that builds the strategy, since a ClientApp validates the same configuration and may not
have the user's module.
"""

from __future__ import annotations

import difflib
import re

from fedsplit.config.errors import ConfigError
from fedsplit.config.schema import STRATEGY_NAMES, DataConfig

#: ``package.module:Class`` (the attribute may be dotted: ``module:Outer.Inner``).
IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")

#: Prefix of model names that stand for a ``torchvision.models`` constructor.
TORCHVISION_PREFIX = "tv:"


def check_strategy_name(name: str) -> None:
    """``strategy.name``: one of :data:`STRATEGY_NAMES` (any case) or ``package.module:Class``.

    Raises
    ------
    ConfigError
        For any other name.
    """
    if name.lower() in STRATEGY_NAMES or IMPORT_PATH.fullmatch(name):
        return
    what = "not a package.module:Class path" if ":" in name else "unknown strategy"
    raise ConfigError(
        f"config: strategy.name = {name!r}: {what} (allowed: {', '.join(STRATEGY_NAMES)}, "
        "or package.module:Class for your own flwr Strategy)"
    )


def check_model_name(name: str) -> None:
    """``model.name``: a model of :data:`fedsplit.models.zoo.MODELS`, or ``tv:<name>`` with
    ``<name>`` in ``torchvision.models.list_models()`` (torchvision is imported for ``tv:`` only).

    Raises
    ------
    ConfigError
        For a name the zoo does not know, or a torchvision model that does not exist.
    """
    from fedsplit.models.zoo import MODELS

    if name in MODELS and not name.startswith(TORCHVISION_PREFIX):
        return
    if not name.startswith(TORCHVISION_PREFIX):
        raise ConfigError(
            f"config: model.name = {name!r}: unknown model (known: {', '.join(MODELS)}; "
            "tv:<name> is any torchvision.models constructor)"
        )
    import torchvision

    tv_name = name[len(TORCHVISION_PREFIX):]
    tv_models = torchvision.models.list_models()
    if tv_name not in tv_models:
        close = difflib.get_close_matches(tv_name, tv_models, n=3)
        hint = f"; closest: {', '.join(TORCHVISION_PREFIX + c for c in close)}" if close else ""
        raise ConfigError(
            f"config: model.name = {name!r}: torchvision has no model {tv_name!r} "
            f"(known: the {len(tv_models)} names of torchvision.models.list_models(){hint})"
        )


def check_data(data: DataConfig) -> None:
    """``data.*``: a known dataset and partitioner, and options that fit them.

    Checks ``data.name`` against :data:`fedsplit.data.DATASETS`, ``data.partitioner`` against
    :data:`fedsplit.data.PARTITIONERS`, that ``data.samples_per_client`` is used with
    ``synthetic`` only, that ``data.classes`` names labels of the dataset, and that
    ``data.shards_per_client`` does not exceed the classes kept.

    Raises
    ------
    ConfigError
        Naming the first field that does not fit.
    """
    from fedsplit.data.datasets import DATASETS, dataset_num_classes
    from fedsplit.data.partitioners import PARTITIONERS

    if data.name not in DATASETS:
        raise ConfigError(f"config: data.name = {data.name!r}: unknown (allowed: {', '.join(DATASETS)})")
    if data.partitioner not in PARTITIONERS:
        raise ConfigError(
            f"config: data.partitioner = {data.partitioner!r}: unknown (allowed: {', '.join(PARTITIONERS)})"
        )
    if data.samples_per_client and data.name != "synthetic":
        raise ConfigError(
            f"config: data.samples_per_client = {data.samples_per_client}: per-client generation is "
            f"for data.name = 'synthetic' only (allowed with {data.name!r}: 0)"
        )
    classes = dataset_num_classes(data.name)
    if data.classes:
        from fedsplit.data.bundle import parse_classes

        if data.samples_per_client:
            raise ConfigError(f"config: data.classes = {data.classes!r}: cannot filter per-client generated data (data.samples_per_client > 0)")
        try:
            classes = len(parse_classes(data.classes, classes))
        except ValueError as exc:
            raise ConfigError(f"config: data.classes = {exc}") from None
    if data.partitioner == "shards":
        if data.shards_per_client > classes:
            raise ConfigError(
                f"config: data.shards_per_client = {data.shards_per_client}: must be <= {classes}, "
                + (f"the classes data.classes = {data.classes!r} keeps" if data.classes else f"the classes of data.name = {data.name!r}")
            )


def check_split(mode: str, model_name: str, cut: str) -> None:
    """``split.cut`` names cuts of ``model.name`` (one cut; two, increasing, for ``sl-ushape``).

    Cut names do not depend on the input size, so the model is built at a nominal input of
    3x32x32 only to list them (:func:`fedsplit.models.contract.cut_points`); ``auto`` is left to
    the run, which chooses by predicted time among the cuts :func:`check_auto_cut` finds.
    """
    if mode == "fl":
        return
    from fedsplit.models.contract import cut_points, resolve_cut
    from fedsplit.models.zoo import build_model

    if cut == "auto":
        from fedsplit.split.cut_select import MODE_PROTOCOL

        if mode in MODE_PROTOCOL:  # split learning (the orchestration modes take no cut)
            check_auto_cut(mode, model_name, build_model(model_name, (3, 32, 32), 10))
        return

    parts = [p.strip() for p in cut.split(",")]
    wanted = 2 if mode == "sl-ushape" else 1
    if len(parts) != wanted:
        form = "'a,b' (the first and the second cut)" if wanted == 2 else "one block name or index"
        raise ConfigError(f"config: split.cut = {cut!r}: training.mode = {mode!r} takes {form}, or auto")
    try:
        points = cut_points(build_model(model_name, (3, 32, 32), 10))
        indices = [resolve_cut(points, p) for p in parts]
    except ValueError as exc:
        raise ConfigError(f"config: split.cut = {cut!r}: {exc}") from None
    if wanted == 2 and not indices[0] < indices[1]:
        raise ConfigError(f"config: split.cut = {cut!r}: the first cut must come before the second")


def check_auto_cut(mode: str, model_name: str, model: "torch.nn.Module") -> None:  # noqa: F821 - torch imported lazily
    """``split.cut = auto`` needs a cut that leaves a layer with parameters on the terminal's input
    side and the server a part that computes (:func:`fedsplit.split.cut_select.local_cuts`,
    :func:`~fedsplit.split.cut_select.server_cuts`): the MLP has no such U-shaped pair."""
    from fedsplit.models.contract import cut_points
    from fedsplit.split.cut_select import MODE_PROTOCOL, local_cuts, server_cuts

    protocol = MODE_PROTOCOL[mode]
    local = set(local_cuts(model))
    try:  # 2 samples: BatchNorm in training mode needs more than one value per channel
        working = server_cuts(model, (3, 32, 32), 2, protocol)
    except (ValueError, RuntimeError):  # a model the nominal input does not fit: the run decides
        return
    usable = [c for c in working if (c[0] if protocol == "u-shape" else c) in local]
    if not usable:
        names = ", ".join(cut_points(model))
        raise ConfigError(
            f"config: split.cut = 'auto': model.name = {model_name!r} has no {'pair of cuts' if protocol == 'u-shape' else 'cut'} "
            f"for training.mode = {mode!r} that leaves parameters on the terminal and a part that computes on the server; "
            f"name {'the cuts' if protocol == 'u-shape' else 'a cut'} (cuts: {names}) or take another model"
        )


def check_transfer(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``model.pretrained``, ``transfer.*``: files that exist (made absolute), a ``trainable`` spec
    the model has.

    ``transfer.trainable`` is resolved on the model built at a nominal 3x32x32 input (block and
    module names do not depend on the input size).

    Raises
    ------
    ConfigError
        Naming the field, the value and what is wrong.
    """
    from pathlib import Path

    for section, name in ((cfg.model, "pretrained"), (cfg.transfer, "teacher")):
        path = getattr(section, name)
        if path and not Path(path).is_file():
            raise ConfigError(f"config: {type(section).__name__.replace('Config', '').lower()}.{name} = {path!r}: no such file (a local checkpoint; nothing is downloaded)")
        if path:  # absolute, so that ClientApps in other working directories (Ray actors) find it
            setattr(section, name, str(Path(path).resolve()))
    if cfg.model.pretrained:
        check_pretrained(cfg)
    if cfg.transfer.teacher:
        check_teacher(cfg)
    trainable = cfg.transfer.trainable.strip()
    if trainable == "all":
        return
    from fedsplit.models.zoo import build_model
    from fedsplit.models.freezing import resolve_trainable

    try:
        resolve_trainable(build_model(cfg.model.name, (3, 32, 32), 10, hidden=cfg.model.hidden, width=cfg.model.width), trainable)
    except ValueError as exc:
        raise ConfigError(f"config: transfer.trainable = {exc}") from None


def check_pretrained(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``model.pretrained``: a readable checkpoint, made for ``model.name`` where its metadata says.

    Whether every tensor fits is known only once the model is built for the data's input shape
    (when the run starts); a checkpoint of another architecture is refused here, before a run
    folder is made.

    Raises
    ------
    ConfigError
        Naming the file, what it was made for and the model of the run.
    """
    from fedsplit.models.checkpoint import CheckpointError, read_checkpoint

    path = cfg.model.pretrained
    try:
        meta = read_checkpoint(path, mmap=True).meta  # the metadata only: the tensors stay on disk
    except CheckpointError as exc:
        raise ConfigError(f"config: model.pretrained = {path!r}: {exc}") from None
    made_for = meta.get("model")
    if made_for is not None and made_for != cfg.model.name:
        raise ConfigError(
            f"config: model.pretrained = {path!r}: made for model {made_for!r}, but model.name = {cfg.model.name!r} "
            f"(set model.name = {made_for!r}, or pretrain a {cfg.model.name!r} with `fedsplit pretrain --set model.name={cfg.model.name}`)"
        )


def check_teacher(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``transfer.teacher``: a ``fedsplit pretrain`` checkpoint whose outputs are the task's classes.

    The distillation term matches the teacher's output ``i`` with the student's output ``i``, so the
    teacher must have one output per class of the task and, where its metadata names them, the same
    dataset and the same classes in the same order (a teacher of digits 0-4 would otherwise teach
    a task of digits 5-9 to call a 5 a 0).

    Raises
    ------
    ConfigError
        For an unreadable file, a plain state_dict (nothing says what the model is), or a teacher
        of other classes; the message names the file, what it was made for and the task.
    """
    from fedsplit.data.bundle import parse_classes
    from fedsplit.data.datasets import canonical_dataset_name, dataset_num_classes
    from fedsplit.models.checkpoint import CheckpointError, read_checkpoint

    path = cfg.transfer.teacher
    try:
        meta = read_checkpoint(path, mmap=True).meta  # the metadata only: the tensors stay on disk
    except CheckpointError as exc:
        raise ConfigError(f"config: transfer.teacher = {path!r}: {exc}") from None
    if not {"model", "input_shape", "num_classes"} <= set(meta):
        raise ConfigError(
            f"config: transfer.teacher = {path!r}: a plain state_dict without model metadata; "
            "a teacher must be a `fedsplit pretrain` checkpoint"
        )
    total = dataset_num_classes(cfg.data.name)
    classes = list(parse_classes(cfg.data.classes, total)) if cfg.data.classes else list(range(total))
    task = f"data.name = {cfg.data.name!r}" + (f", data.classes = {cfg.data.classes!r}" if cfg.data.classes else "")
    if int(meta["num_classes"]) != len(classes):
        raise ConfigError(
            f"config: transfer.teacher = {path!r}: the teacher has {meta['num_classes']} outputs, "
            f"the task ({task}) {len(classes)} classes"
        )
    dataset = meta.get("dataset")
    try:
        other_dataset = dataset is not None and canonical_dataset_name(dataset) != canonical_dataset_name(cfg.data.name)
    except ValueError:
        other_dataset = True
    if other_dataset or (meta.get("classes") is not None and list(meta["classes"]) != classes):
        made_for = f"{dataset} classes {list(meta['classes'])}" if meta.get("classes") is not None else f"dataset {dataset!r}"
        raise ConfigError(
            f"config: transfer.teacher = {path!r}: the teacher's outputs are {made_for}, the task's ({task}) "
            f"{cfg.data.name} classes {classes}: its soft labels would teach other classes"
        )


def check_faults(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``faults.*``: rates that one draw can honour, an engine that can inject them, a reachable
    ``min_clients``.

    Raises
    ------
    ConfigError
        Naming the field and what is allowed.
    """
    from fedsplit.faults import FaultPlan

    f = cfg.faults
    try:
        plan = FaultPlan(f.crash_rate, f.kill_rate, f.seed)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    if plan.active and cfg.engine.name == "flower":
        raise ConfigError(
            "config: faults.crash_rate / faults.kill_rate > 0: injected faults need engine.name = fedsplit or serial "
            "(Flower's engine runs the ClientApps out of fedsplit's reach)"
        )
    if f.min_clients > cfg.num_terminals:
        raise ConfigError(
            f"config: faults.min_clients = {f.min_clients}: more than the {cfg.num_terminals} terminals of the population"
        )


def check_budget(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``strategy.resource_budget_s`` / ``resource_budget_j``: at most one, and only where the
    budget controller runs (``training.mode = 'fl'`` with ``strategy.local_work = 'adaptive'``).

    Raises
    ------
    ConfigError
        Naming the field, the value and what is needed.
    """
    s = cfg.strategy
    set_ = [(name, getattr(s, name)) for name in ("resource_budget_s", "resource_budget_j") if getattr(s, name) > 0]
    if len(set_) > 1:
        raise ConfigError(
            f"config: strategy.resource_budget_s = {s.resource_budget_s} and strategy.resource_budget_j = {s.resource_budget_j}: "
            "set one budget (time or energy), not both"
        )
    if set_ and (s.local_work != "adaptive" or cfg.training.mode != "fl"):
        name, value = set_[0]
        raise ConfigError(
            f"config: strategy.{name} = {value}: the budget controller chooses adaptive local work; it needs "
            f"strategy.local_work = 'adaptive' and training.mode = 'fl' (got {s.local_work!r}, {cfg.training.mode!r})"
        )


#: Protocols whose terminals train whole models with fedsplit's ``train`` handler (where local
#: DP-SGD and the attacks act).
TRAIN_MESSAGE_MODES: tuple[str, ...] = ("fl", "fedbuff", "fedasync", "gossip")


def check_protocol_settings(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """Settings only ``training.mode = 'fl'`` reads (``compression``, ``strategy.name``, ``strategy.params``,
    ``strategy.selection``, ``strategy.local_work``), and distillation
    (``transfer.teacher``), which acts in the ``train`` handler of :data:`TRAIN_MESSAGE_MODES`:
    with another mode they were ignored without a word (a split or asynchronous run with
    ``compression`` sent every update dense).

    Raises
    ------
    ConfigError
        Naming the first such field, its value and the modes that use it.
    """
    from fedsplit.config.schema import StrategyConfig

    mode = cfg.training.mode
    if mode != "fl":
        default = StrategyConfig()
        ignored = [("compression", cfg.compression)] if cfg.compression else []
        ignored += [
            (f"strategy.{name}", getattr(cfg.strategy, name))
            for name in ("name", "params", "selection", "local_work")
            if getattr(cfg.strategy, name) != getattr(default, name)
        ]
        if ignored:
            name, value = ignored[0]
            raise ConfigError(
                f"config: {name} = {value!r}: has no effect with training.mode = {mode!r} "
                "(only training.mode = 'fl' runs a strategy and compresses updates)"
            )
    if cfg.transfer.teacher and mode not in TRAIN_MESSAGE_MODES:
        raise ConfigError(
            f"config: transfer.teacher with training.mode = {mode!r}: distillation acts in whole-model local training "
            f"(training.mode = {', '.join(TRAIN_MESSAGE_MODES)}); split learning computes the loss without the teacher"
        )


def check_privacy(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``privacy.*``, ``attack.*``, ``defence.*``: a noise or a budget, a protocol each applies to, at
    least one attacker, one clipping bound, no setting that would be ignored.

    Raises
    ------
    ConfigError
        Naming the field, the value and what is allowed.
    """
    p, a, d, mode = cfg.privacy, cfg.attack, cfg.defence, cfg.training.mode
    if p.mode == "off":
        for name in ("noise_multiplier", "epsilon"):
            if getattr(p, name):
                raise ConfigError(f"config: privacy.{name} = {getattr(p, name)}: has no effect with privacy.mode = 'off' (set privacy.mode = 'local' or 'central')")
    elif p.noise_multiplier == 0 and p.epsilon == 0:
        raise ConfigError(f"config: privacy.mode = {p.mode!r}: needs privacy.noise_multiplier > 0 or a budget privacy.epsilon > 0")
    # local DP-SGD runs in every mode: on whole models (TRAIN_MESSAGE_MODES) and on split learning's
    # terminal part(s) (fedsplit.clients.split_privacy)
    if p.mode == "local" and cfg.strategy.name.lower() == "fedprox":
        raise ConfigError("config: privacy.mode = 'local' with strategy.name = 'fedprox': the proximal term has no per-sample gradient (DP-SGD would drop it)")
    if p.mode == "central" and mode != "fl":
        raise ConfigError(f"config: privacy.mode = 'central' with training.mode = {mode!r}: Flower's DP wrappers need training.mode = 'fl'")
    if a.kind != "none":
        if a.fraction * cfg.num_terminals < 0.5:  # fedsplit.privacy.attacks.num_attackers rounds half up
            raise ConfigError(f"config: attack.fraction = {a.fraction}: no attacker among {cfg.num_terminals} terminals (need fraction >= {0.5 / cfg.num_terminals:.3g})")
        if mode not in TRAIN_MESSAGE_MODES:
            raise ConfigError(f"config: attack.kind = {a.kind!r} with training.mode = {mode!r}: attacks act on whole-model updates ({', '.join(TRAIN_MESSAGE_MODES)})")
    if d.clip_norm and d.clip_factor:
        raise ConfigError(f"config: defence.clip_norm = {d.clip_norm} and defence.clip_factor = {d.clip_factor}: set one of them")
    active = [name for name in ("clip_norm", "clip_factor", "reject_norm", "reject_factor") if getattr(d, name)]
    if active and mode != "fl":
        raise ConfigError(f"config: defence.{active[0]} with training.mode = {mode!r}: the norm defence wraps the strategy of training.mode = 'fl'")
    if 0 < d.reject_factor < 1:
        raise ConfigError(f"config: defence.reject_factor = {d.reject_factor}: must be >= 1 (below 1 it rejects about half of the honest updates)")


#: Strategies whose aggregation needs only the weighted average of the updates, all secure
#: aggregation gives the server (the robust ones need each update).
SECAGG_STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")


def check_secagg(cfg: "RunConfig") -> None:  # noqa: F821 - a RunConfig; imported lazily by the loader
    """``secagg.*``: valid shares/threshold/quantization, and nothing that needs the individual
    updates secure aggregation hides from the server (robust strategies, the norm defence, server-side
    DP clipping, FedNova weights, update compression) or another protocol than ``fl``.

    Raises
    ------
    ConfigError
        One line naming the conflicting fields and what is allowed.
    """
    from dataclasses import fields

    from fedsplit.config.schema import SecAggConfig
    from fedsplit.secagg import SecAggSettings

    sa = cfg.secagg
    if not sa.enabled:
        default = SecAggConfig()
        changed = [f.name for f in fields(sa) if getattr(sa, f.name) != getattr(default, f.name)]
        if changed:
            raise ConfigError(f"config: secagg.{changed[0]} = {getattr(sa, changed[0])!r}: has no effect with secagg.enabled = false")
        return
    name = cfg.strategy.name.lower()
    conflicts = [
        (cfg.training.mode != "fl", f"training.mode = {cfg.training.mode!r}: secure aggregation needs training.mode = 'fl'"),
        (name not in SECAGG_STRATEGIES, f"strategy.name = {cfg.strategy.name!r}: secure aggregation hides the individual updates it needs (allowed: {', '.join(SECAGG_STRATEGIES)})"),
        (bool(cfg.compression), "compression: compressed updates cannot be masked and summed (drop compression or secagg)"),
        (cfg.strategy.local_work == "adaptive", "strategy.local_work = 'adaptive': FedNova's per-terminal weights need the individual updates"),
        (cfg.privacy.mode == "central", "privacy.mode = 'central': Flower's DP wrappers clip or weigh each update on the server; use privacy.mode = 'local' with secagg"),
    ]
    conflicts += [
        (bool(getattr(cfg.defence, f)), f"defence.{f} = {getattr(cfg.defence, f)}: the norm defence needs the individual updates")
        for f in ("clip_norm", "clip_factor", "reject_norm", "reject_factor")
    ]
    for bad, text in conflicts:
        if bad:
            raise ConfigError(f"config: secagg.enabled with {text}")
    try:
        settings = SecAggSettings(sa.num_shares, sa.threshold, sa.clipping_range, sa.quantization_range, max_weight=sa.max_weight or 1.0)
    except ValueError as exc:
        raise ConfigError(f"config: {exc}") from None
    n = cfg.num_terminals
    if n < 2:
        raise ConfigError(f"config: secagg.enabled with {n} terminal: secure aggregation needs at least 2")
    if settings.threshold_for(settings.shares_for(n)) > n:
        raise ConfigError(f"config: secagg.threshold = {sa.threshold}: more than the {n} terminals of the population (no round could be unmasked)")
    if n > settings.max_summands():
        raise ConfigError(
            f"config: secagg.quantization_range = {sa.quantization_range}: {n} terminals could wrap the masked sum around 2**32 "
            f"(at most 2**32 // quantization_range = {settings.max_summands()})"
        )
