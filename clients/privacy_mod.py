"""Differential privacy on the terminal: local DP-SGD with a persistent accountant, and central DP's clipping.

Two pieces, both driven by the run's ``privacy.*`` configuration:

- :func:`local_trainer` is the ClientApp's training function for this terminal: ``train_local``
  itself, or, with ``privacy.mode = "local"``, DP-SGD with Opacus
  (:func:`fedsplit.privacy.dp_sgd.dp_train_local`) continuing the terminal's accountant, which
  lives in ``Context.state["fedsplit.dp-accountant"]`` (a ConfigRecord: ``mechanism``,
  ``noise``, ``sample-rate``, ``steps``, one list entry per run of identical steps) and so
  persists across rounds wherever the terminal runs (fedsplit's engine, Flower's engine, a
  SuperNode), and can be checkpointed with the other terminal states. A ``labelflip`` attacker's
  labels are flipped here too (:mod:`fedsplit.clients.attack_mod` does the update attacks).
- :func:`make_privacy_mod` builds a Flower mod. With local DP it refuses a round that would
  take the terminal past ``privacy.epsilon`` (an error reply, code :data:`PRIVACY_BUDGET_CODE`,
  whose reason says so: the ledger shows it as ``failed`` with that reason) and adds to every
  train reply's metrics ``dp-epsilon`` (the terminal's cumulative epsilon after this round, at
  ``privacy.delta``), ``dp-noise-multiplier`` and ``dp-steps`` (noisy steps so far). With
  ``privacy.mode = "central"`` and ``privacy.clipping = client-*`` it runs Flower's own
  ``fixedclipping_mod`` / ``adaptiveclipping_mod``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable

from fedsplit.config import RunConfig
from fedsplit.learning import Task, config_from_json, task_for, train_local
from fedsplit.privacy import accountant as acc
from fedsplit.privacy.attacks import attacker_ids, flip_labels
from fedsplit.privacy.dp_sgd import PoissonSchedule, dp_train_local, planned_noise

log = logging.getLogger("fedsplit")

ACCOUNTANT_STATE_KEY = "fedsplit.dp-accountant"
"""``Context.state`` key of the terminal's accountant (a ConfigRecord)."""

EPSILON_METRIC = "dp-epsilon"
NOISE_METRIC = "dp-noise-multiplier"
STEPS_METRIC = "dp-steps"

PRIVACY_BUDGET_CODE = 4620
"""``Error.code`` of a terminal that refuses to train because its budget is spent."""


def load_accountant(context: Context, mechanism: str) -> acc.AccountantState:
    """The terminal's accountant state from ``context.state`` (empty on its first round)."""
    record = context.state.config_records.get(ACCOUNTANT_STATE_KEY)
    if record is None:
        return acc.empty_state(mechanism)
    if record.get("mechanism") != mechanism:
        raise ValueError(f"terminal's accountant is {record.get('mechanism')!r}, the run's privacy.accountant is {mechanism!r}")
    history = zip(record.get("noise", []), record.get("sample-rate", []), record.get("steps", []))
    return {"mechanism": mechanism, "history": [[float(s), float(q), int(n)] for s, q, n in history]}


def store_accountant(context: Context, state: acc.AccountantState) -> None:
    """Write ``state`` to ``context.state`` (plain lists in a ConfigRecord)."""
    history = state["history"]
    context.state[ACCOUNTANT_STATE_KEY] = ConfigRecord(
        {
            "mechanism": state["mechanism"],
            "noise": [float(s) for s, _, _ in history],
            "sample-rate": [float(q) for _, q, _ in history],
            "steps": [int(n) for _, _, n in history],
        }
    )


@dataclass(frozen=True)
class RoundPlan:
    """One terminal's DP-SGD in one round: the noise, the sampling and the steps it will take."""

    noise_multiplier: float
    schedule: PoissonSchedule
    steps: int

    @classmethod
    def of(cls, cfg: RunConfig, n: int, batch_size: int, epochs: int) -> "RoundPlan":
        """The plan for ``n`` local samples: ``privacy.noise_multiplier``, or the noise that spends
        ``privacy.epsilon`` over ``rounds * train.local_epochs`` epochs of this terminal."""
        p = cfg.privacy
        noise = p.noise_multiplier or planned_noise(p.epsilon, p.delta, n, batch_size, cfg.train.local_epochs, cfg.rounds, p.accountant)
        schedule = PoissonSchedule.of(n, batch_size)
        return cls(noise_multiplier=noise, schedule=schedule, steps=epochs * schedule.steps_per_epoch)

    def after(self, state: acc.AccountantState) -> acc.AccountantState:
        """``state`` once this round's steps are taken."""
        return acc.with_steps(state, self.noise_multiplier, self.schedule.sample_rate, self.steps)


@functools.lru_cache(maxsize=16)
def _attackers(num_terminals: int, fraction: float, seed: int) -> frozenset[int]:
    return attacker_ids(num_terminals, fraction, seed)


def flips_labels(cfg: RunConfig, partition_id: int) -> bool:
    """Whether this terminal is a ``labelflip`` attacker."""
    return cfg.attack.kind == "labelflip" and partition_id in _attackers(cfg.num_terminals, cfg.attack.fraction, cfg.seed)


def local_trainer(task: Task, partition_id: int, context: Context) -> Callable[..., Any]:
    """The training function of this terminal, called like :func:`fedsplit.learning.train_local`.

    ``train_local`` itself unless the run has local DP (then DP-SGD continuing the accountant in
    ``context.state``) or this terminal flips labels.
    """
    cfg = task.cfg
    flip = flips_labels(cfg, partition_id)
    private = cfg.privacy.mode == "local"
    if not flip and not private:
        return train_local

    def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs: Any):  # noqa: ANN202 - a TrainResult
        if flip:
            y = flip_labels(y, int(task.data.num_classes))
        if not private:
            return train_local(model, x, y, **kwargs)
        if kwargs.pop("teacher", None) is not None:
            raise ValueError("privacy.mode = 'local': distillation (transfer.teacher) is not supported with DP-SGD")
        for ignored in ("temperature", "alpha", "batchnorm_eval"):  # no teacher; no BatchNorm after opacus_compatible
            kwargs.pop(ignored, None)
        p = cfg.privacy
        plan = RoundPlan.of(cfg, int(x.shape[0]), int(kwargs["batch_size"]), int(kwargs["epochs"]))
        result, state = dp_train_local(
            model, x, y, noise_multiplier=plan.noise_multiplier, max_grad_norm=p.max_grad_norm,
            accountant=load_accountant(context, p.accountant), **kwargs,
        )
        store_accountant(context, state)
        return result

    return train


def _error_reply(msg: Message, reason: str) -> Message:
    return Message(Error(code=PRIVACY_BUDGET_CODE, reason=reason), reply_to=msg)


def run_task(context: Context, config_json: str | None) -> Task:
    """The run's task, with its configuration resolved as the ClientApp resolves it."""
    from fedsplit.clients.app import _config_json

    return task_for(_config_json(context, config_json))


@functools.lru_cache(maxsize=8)
def _parsed(config_json: str) -> RunConfig:
    return config_from_json(config_json)


def run_config(context: Context, config_json: str | None) -> RunConfig:
    """The run's configuration as the ClientApp resolves it (parsed once; no data, no model)."""
    from fedsplit.clients.app import _config_json

    return _parsed(_config_json(context, config_json))


def make_privacy_mod(config_json: str | None = None) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """A Flower mod applying the run's ``privacy.*`` on the terminal (see the module docstring).

    Parameters
    ----------
    config_json : str, optional
        The run's resolved configuration, as :func:`fedsplit.clients.app.make_client_app` got it;
        without it, the run config's ``config-file``/``overrides`` (deployed ClientApps).
    """

    def privacy_mod(msg: Message, ctx: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
            return call_next(msg, ctx)
        cfg = run_config(ctx, config_json)
        p = cfg.privacy
        if p.mode == "central" and p.clipping.startswith("client-"):
            clip = fixedclipping_mod if p.clipping == "client-fixed" else adaptiveclipping_mod
            return clip(msg, ctx, call_next)
        if p.mode != "local":
            return call_next(msg, ctx)
        task = run_task(ctx, config_json)
        pid = int(ctx.node_config["partition-id"])
        config = msg.content.config_records.get("config", ConfigRecord())
        n = len(task.data.partition(pid)[0])
        plan = RoundPlan.of(cfg, n, int(config.get("batch-size", cfg.train.batch_size)), int(config.get("local-epochs", cfg.train.local_epochs)))
        state = load_accountant(ctx, p.accountant)
        if p.epsilon > 0 and n > 0:
            spent, would_be = acc.epsilon(state, p.delta), acc.epsilon(plan.after(state), p.delta)
            if would_be > p.epsilon:
                log.info("privacy: terminal %d stops training: epsilon %.4g, this round would reach %.4g > budget %.4g", pid, spent, would_be, p.epsilon)
                return _error_reply(msg, f"privacy budget spent: epsilon {spent:.4g}, this round would reach {would_be:.4g} > privacy.epsilon = {p.epsilon:g} (delta {p.delta:g})")
        reply = call_next(msg, ctx)
        if reply.has_error() or "metrics" not in reply.content.metric_records:
            return reply
        state = load_accountant(ctx, p.accountant)
        metrics = reply.content.metric_records["metrics"]
        metrics[EPSILON_METRIC] = acc.epsilon(state, p.delta)
        metrics[NOISE_METRIC] = float(plan.noise_multiplier)
        metrics[STEPS_METRIC] = acc.total_steps(state)
        return reply

    return privacy_mod
