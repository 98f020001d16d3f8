"""The learning task of a run: federated data and the model, built once per process from the config.

Both the server (initial model, held-out test set) and every ClientApp (its partition, a model to
train) build the same :class:`Task` from the same :class:`~fedsplit.config.RunConfig`; a process
keeps one per configuration so actors reuse data and model across clients and rounds. A process
handed the data another built from that configuration (:func:`provide_data`: the simulation's
actors get the driver's with their ClientApp) builds its task on it instead of loading it again.

Transfer (:mod:`fedsplit.transfer`): with ``model.pretrained`` the model starts from a local
checkpoint; with ``transfer.trainable`` other than ``all`` only the trainable parameters travel
(:attr:`Task.travelling`, :meth:`Task.initial_state`), and both sides rebuild the whole model from
them plus the pretrained rest (:meth:`Task.full_state`).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from fedsplit.config import RunConfig, config_from_dict, config_to_dict
from fedsplit.data import FederatedData, make_federated_data
from fedsplit.data.bundle import parse_classes
from fedsplit.data.datasets import dataset_num_classes
from fedsplit.models import build_model
from fedsplit.models.opacus_compat import opacus_compatible
from fedsplit.models.checkpoint import load_pretrained, model_from_checkpoint
from fedsplit.models.freezing import FreezePlan, apply_freezing, plan_freezing


def config_to_json(cfg: RunConfig) -> str:
    """Serialise a resolved configuration (the form ClientApps receive it in)."""
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def config_from_json(text: str) -> RunConfig:
    """Inverse of :func:`config_to_json`."""
    return config_from_dict(json.loads(text))


def source_classes(cfg: RunConfig) -> list[int]:
    """The dataset's own labels of the task's outputs ``0 .. k-1`` (``data.classes``, else all)."""
    total = dataset_num_classes(cfg.data.name)
    return list(parse_classes(cfg.data.classes, total)) if cfg.data.classes else list(range(total))


class TravellingKeysError(ValueError):
    """A received model does not hold exactly the tensors this run sends."""


@dataclass
class Task:
    """Data and model of a run, shared by all terminals emulated in one process.

    Attributes
    ----------
    initial : OrderedDict
        The whole initial model (seeded init, or ``model.pretrained``), every state_dict key.
    travelling : tuple of str
        Keys sent to and from terminals: every key, or the trainable ones under freezing.
    plan : FreezePlan or None
        What trains and what travels (None: everything).
    """

    cfg: RunConfig
    data: FederatedData
    model: nn.Module
    initial: "OrderedDict[str, torch.Tensor]"
    travelling: tuple[str, ...] = ()
    plan: FreezePlan | None = None
    _teacher: nn.Module | None = None

    @classmethod
    def from_config(cls, cfg: RunConfig, data: FederatedData | None = None) -> "Task":
        """Build the task (data partitions are materialised lazily, on first use).

        ``data``: the run's data as another process built it from ``cfg``
        (:func:`provide_data`); by default it is built here.

        Raises
        ------
        ValueError
            If ``data`` has another number of partitions than ``cfg`` has terminals.
        """
        if data is None:
            data = make_federated_data(cfg)
        elif data.num_partitions != cfg.num_terminals:
            raise ValueError(f"the data handed over has {data.num_partitions} partitions, the run {cfg.num_terminals} terminals")
        model = build_model(
            cfg.model.name,
            tuple(data.input_shape),
            data.num_classes,
            hidden=cfg.model.hidden,
            width=cfg.model.width,
            seed=cfg.seed,
        )
        if cfg.model.pretrained:
            load_pretrained(model, cfg.model.pretrained, target={"dataset": cfg.data.name, "classes": source_classes(cfg)})
        if cfg.privacy.mode == "local":  # DP-SGD needs per-sample gradients: BatchNorm -> GroupNorm, on both sides
            model = opacus_compatible(model, f"model {cfg.model.name!r}")
        plan = plan_freezing(model, cfg.transfer.trainable, cfg.transfer.batchnorm)
        if plan is not None:
            apply_freezing(model, plan.trainable)
        initial = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        travelling = plan.travelling if plan is not None else tuple(initial)
        return cls(cfg=cfg, data=data, model=model, initial=initial, travelling=tuple(travelling), plan=plan)

    def initial_state(self) -> "OrderedDict[str, torch.Tensor]":
        """The initial global weights that travel (a copy; ``model`` itself is reused for training).

        Without freezing: the whole state_dict. Under freezing: the trainable parameters only.
        """
        return OrderedDict((k, self.initial[k].clone()) for k in self.travelling)

    def full_state(
        self, state: "dict[str, torch.Tensor]", local: "dict[str, torch.Tensor] | None" = None
    ) -> "OrderedDict[str, torch.Tensor]":
        """The whole model from ``state`` (travelling keys, or more) plus the pretrained rest.

        ``local`` (a terminal's own BatchNorm statistics) overrides the pretrained values of
        its keys. The result has every key of the model, in its order.
        """
        unknown = [k for k in state if k not in self.initial]
        if unknown:
            raise TravellingKeysError(f"model {self.cfg.model.name!r} has no tensor {unknown[0]!r}")
        local = local or {}
        return OrderedDict(
            (k, state[k] if k in state else local[k] if k in local else self.initial[k]) for k in self.initial
        )

    def check_travelling(self, keys: "list[str] | tuple[str, ...]") -> None:
        """Raise :class:`TravellingKeysError` unless ``keys`` are exactly :attr:`travelling`."""
        if set(keys) == set(self.travelling):
            return
        expected = set(self.travelling)
        missing = [k for k in self.travelling if k not in set(keys)]
        extra = [k for k in keys if k not in expected]
        what = f"transfer.trainable = {self.cfg.transfer.trainable!r}" if self.plan is not None else "no freezing"
        raise TravellingKeysError(
            f"received model has {len(keys)} tensors, this run ({what}) sends exactly {len(expected)}: "
            + "; ".join(p for p in (f"missing {missing[:5]}" if missing else "", f"unexpected {extra[:5]}" if extra else "") if p)
        )

    def teacher(self) -> nn.Module | None:
        """The distillation teacher of ``transfer.teacher`` (built once per process), or None.

        Raises
        ------
        ValueError
            If its number of outputs is not the task's.
        """
        path = self.cfg.transfer.teacher
        if not path:
            return None
        if self._teacher is None:
            teacher = model_from_checkpoint(path)
            for p in teacher.parameters():
                p.requires_grad_(False)
            outputs = int(teacher(torch.zeros(1, *self.data.input_shape)).shape[1])
            if outputs != self.data.num_classes:
                raise ValueError(
                    f"transfer.teacher = {path!r}: the teacher has {outputs} outputs, the task {self.data.num_classes} classes"
                )
            self._teacher = teacher
        return self._teacher


_TASKS: "OrderedDict[str, Task]" = OrderedDict()
_MAX_TASKS = 4
_PROVIDED: dict[str, FederatedData] = {}


def provide_data(config_json: str, data: FederatedData) -> None:
    """Have this process build the task of ``config_json`` on ``data`` (the data as the process
    that sent it built it from the same configuration) instead of loading and partitioning the
    dataset again, unless the task is built already. :func:`fedsplit.clients.app.make_client_app`
    hands the driver's data to its actors this way."""
    if config_json not in _TASKS:
        _PROVIDED[config_json] = data


def task_for(config_json: str) -> Task:
    """The process-wide :class:`Task` of a configuration (built on first use, then reused; on the
    data :func:`provide_data` gave for it, if any)."""
    task = _TASKS.get(config_json)
    if task is None:
        task = Task.from_config(config_from_json(config_json), _PROVIDED.pop(config_json, None))
        _TASKS[config_json] = task
        while len(_TASKS) > _MAX_TASKS:
            _TASKS.popitem(last=False)
    else:
        _TASKS.move_to_end(config_json)
    return task
