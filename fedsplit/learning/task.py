"""The learning task of a run: federated data and the model, built once per process from the config.

Both the server (initial model, held-out test set) and every ClientApp (its partition, a model to
train) build the same :class:`Task` from the same :class:`~fedsplit.config.RunConfig`; a process
keeps one per configuration so actors reuse data and model across clients and rounds.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from fedsplit.config import RunConfig, config_from_dict, config_to_dict
from fedsplit.data import FederatedData, make_federated_data
from fedsplit.models import build_model


def config_to_json(cfg: RunConfig) -> str:
    """Serialise a resolved configuration (the form ClientApps receive it in)."""
    return json.dumps(config_to_dict(cfg), sort_keys=True)


def config_from_json(text: str) -> RunConfig:
    """Inverse of :func:`config_to_json`."""
    return config_from_dict(json.loads(text))


@dataclass
class Task:
    """Data and model of a run, shared by all terminals emulated in one process."""

    cfg: RunConfig
    data: FederatedData
    model: nn.Module
    initial: "OrderedDict[str, torch.Tensor]"

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "Task":
        """Build the task (data partitions are materialised lazily, on first use)."""
        data = make_federated_data(cfg)
        model = build_model(
            cfg.model.name,
            tuple(data.input_shape),
            data.num_classes,
            hidden=cfg.model.hidden,
            width=cfg.model.width,
            seed=cfg.seed,
        )
        initial = OrderedDict((k, v.detach().clone()) for k, v in model.state_dict().items())
        return cls(cfg=cfg, data=data, model=model, initial=initial)

    def initial_state(self) -> "OrderedDict[str, torch.Tensor]":
        """The seeded initial global weights (a copy; ``model`` itself is reused for training)."""
        return OrderedDict((k, v.clone()) for k, v in self.initial.items())


_TASKS: "OrderedDict[str, Task]" = OrderedDict()
_MAX_TASKS = 4


def task_for(config_json: str) -> Task:
    """The process-wide :class:`Task` of a configuration (built on first use, then reused)."""
    task = _TASKS.get(config_json)
    if task is None:
        task = Task.from_config(config_from_json(config_json))
        _TASKS[config_json] = task
        while len(_TASKS) > _MAX_TASKS:
            _TASKS.popitem(last=False)
    else:
        _TASKS.move_to_end(config_json)
    return task
