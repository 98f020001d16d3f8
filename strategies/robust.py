"""Robustness around any Flower strategy: norm clipping and rejection of updates (``defence.*``).

``NormDefenceStrategy(inner)`` measures each train reply's update (``reply - sent``, L2 over the
floating-point tensors, :mod:`fedsplit.privacy.norms`), rejects those above the rejection bound
(one log line and ``on_reject(server_round, node_id, reason)``: the ledger marks the terminal
``rejected`` with the reason), scales the rest down to the clipping bound, and hands them to
``inner.aggregate_train``. Bounds are absolute or a multiple of the round's median update norm.
It composes with Flower's robust aggregators by name (``strategy.name = krum | multikrum | bulyan |
fedmedian | fedtrimmedavg``) and with central DP (:class:`~fedsplit.strategies.central_dp.CentralPrivacyStrategy`).

:func:`wrap_robustness` builds the run's wrappers from its configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsplit.clients.arrays import array_record_from_state, record_views
from fedsplit.config import RunConfig
from fedsplit.privacy.norms import bound, clip_update, update_norm
from fedsplit.records import record_key, section
from fedsplit.strategies.compression import RejectCallback, _DelegatingStrategy

log = logging.getLogger("fedsplit")

ARRAYS_KEY = "arrays"
CLIPPED_METRIC = "fedsplit.clipped"
NORM_REJECTED_METRIC = "fedsplit.norm-rejected"
MEDIAN_NORM_METRIC = "fedsplit.median-update-norm"


class NormDefenceStrategy(_DelegatingStrategy):
    """Reject and clip updates by their L2 norm before ``inner`` aggregates them.

    Parameters
    ----------
    inner : Strategy
        Any Flower strategy.
    clip_norm, clip_factor : float
        Clip every update to ``clip_norm``, or to ``clip_factor`` times the median norm of the
        round's accepted updates (0 = off; one of the two).
    reject_norm, reject_factor : float
        Reject updates above ``reject_norm``, or above ``reject_factor`` times the round's median
        update norm (0 = off; with both, the tighter bound).
    on_reject : Callable[[int, int, str], None], optional
        Called as ``on_reject(server_round, node_id, reason)`` for each rejected reply.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        clip_norm: float = 0.0,
        clip_factor: float = 0.0,
        reject_norm: float = 0.0,
        reject_factor: float = 0.0,
        on_reject: RejectCallback | None = None,
    ) -> None:
        super().__init__(inner, on_reject)
        self.clip_norm, self.clip_factor = clip_norm, clip_factor
        self.reject_norm, self.reject_factor = reject_norm, reject_factor
        self._sent: dict[int, dict[str, np.ndarray]] = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        messages = list(self.inner.configure_train(server_round, arrays, config, grid))
        views: dict[int, dict[str, np.ndarray]] = {}
        self._sent = {}
        for msg in messages:
            key = record_key(section(msg.content, ArrayRecord), ARRAYS_KEY)
            if key is not None:
                record = msg.content[key]
                self._sent[msg.metadata.dst_node_id] = views.setdefault(id(record), record_views(record))
        return messages

    def _measure(self, msg: Message) -> tuple[str, dict[str, np.ndarray], float] | None:
        """(arrays key, the reply's arrays, its update norm), or None for a reply it cannot measure."""
        sent = self._sent.get(msg.metadata.src_node_id)
        key = record_key(section(msg.content, ArrayRecord), ARRAYS_KEY)
        if sent is None or key is None:
            return None
        local = record_views(msg.content[key])
        if set(local) != set(sent):
            return None  # the validation wrapper outside rejects it
        return key, local, update_norm(sent, local)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        measured = {id(m): self._measure(m) for m in replies if not m.has_error()}
        norms = [v[2] for v in measured.values() if v is not None]
        reject_limit = bound(norms, self.reject_norm, self.reject_factor)
        kept, rejected = [], 0
        for msg in replies:
            found = measured.get(id(msg))
            if found is not None and found[2] > reject_limit:
                rejected += 1
                self._reject(server_round, msg.metadata.src_node_id, f"update norm {found[2]:.4g} > {reject_limit:.4g} ({self._rule('reject')})")
                continue
            kept.append(msg)
        kept_norms = [measured[id(m)][2] for m in kept if measured.get(id(m)) is not None]
        clip_limit = bound(kept_norms, self.clip_norm, self.clip_factor)
        clipped = 0
        for msg in kept:
            found = measured.get(id(msg))
            if found is None or found[2] <= clip_limit:
                continue
            key, local, norm = found
            content = RecordDict(dict(msg.content.items()))  # records may be shared: replace, never modify
            content[key] = array_record_from_state(clip_update(self._sent[msg.metadata.src_node_id], local, norm, clip_limit))
            msg.content = content
            clipped += 1
        if clipped:
            log.info("round %d: %d update(s) clipped to norm %.4g (%s)", server_round, clipped, clip_limit, self._rule("clip"))
        arrays, metrics = self.inner.aggregate_train(server_round, kept)
        if metrics is not None:
            metrics[CLIPPED_METRIC] = clipped
            metrics[NORM_REJECTED_METRIC] = rejected
            if norms:
                metrics[MEDIAN_NORM_METRIC] = float(np.median(norms))
        self._sent = {}
        return arrays, metrics

    def _rule(self, what: str) -> str:
        absolute, factor = (self.reject_norm, self.reject_factor) if what == "reject" else (self.clip_norm, self.clip_factor)
        parts = ([f"defence.{what}_norm = {absolute:g}"] if absolute else []) + (
            [f"defence.{what}_factor = {factor:g} x median"] if factor else []
        )
        return ", ".join(parts)


def wrap_robustness(strategy: Strategy, cfg: RunConfig, on_reject: RejectCallback | None) -> Strategy:
    """``strategy`` with the run's central DP (``privacy.mode = "central"``) and norm defence (``defence.*``).

    Order, inside out: the strategy, Flower's DP wrapper (clips, aggregates, adds noise), the norm
    defence (rejected updates never reach the DP wrapper). Returns ``strategy`` itself when
    neither is configured.
    """
    if cfg.privacy.mode == "central":
        from fedsplit.strategies.central_dp import central_privacy

        strategy = central_privacy(strategy, cfg)
    d = cfg.defence
    if d.clip_norm or d.clip_factor or d.reject_norm or d.reject_factor:
        strategy = NormDefenceStrategy(
            strategy, clip_norm=d.clip_norm, clip_factor=d.clip_factor, reject_norm=d.reject_norm, reject_factor=d.reject_factor, on_reject=on_reject
        )
    return strategy
