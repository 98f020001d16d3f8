"""The privacy a run gave, for ``summary.json``: from the ledger (local DP) or the strategy (central DP)."""

from __future__ import annotations

from typing import Any

from fedsplit.config import RunConfig
from fedsplit.ledger import Ledger

#: Start of the reason of a terminal that refused to train with its budget spent (``privacy_mod``).
BUDGET_SPENT_REASON = "privacy budget spent"


def local_privacy(cfg: RunConfig, ledger: Ledger) -> dict[str, Any]:
    """Each terminal's final cumulative epsilon (its last ``dp_epsilon`` in the ledger), their
    maximum and mean, and the terminals that stopped at their budget."""
    last: dict[int, float] = {}
    stopped: set[int] = set()
    for row in ledger.rows:
        if row.phase != "train":
            continue
        if row.dp_epsilon > 0:
            last[row.client_id] = row.dp_epsilon
        if row.reason.startswith(BUDGET_SPENT_REASON):
            stopped.add(row.client_id)
    p = cfg.privacy
    values = list(last.values())
    return {
        "mode": "local",
        "delta": p.delta,
        "accountant": p.accountant,
        "noise_multiplier": p.noise_multiplier or "planned per terminal from privacy.epsilon",
        "max_grad_norm": p.max_grad_norm,
        "budget_epsilon": p.epsilon or None,
        "max_epsilon": max(values, default=0.0),
        "mean_epsilon": sum(values) / len(values) if values else 0.0,
        "epsilon_by_terminal": {str(k): v for k, v in sorted(last.items())},
        "terminals_at_budget": sorted(stopped),
    }


def privacy_extra(cfg: RunConfig, strategy: Any, ledger: Ledger) -> dict[str, Any]:
    """``{"privacy": {...}}`` for ``summary.json``, or ``{}`` when the run had no DP.

    Central DP's report comes from the strategy (``privacy_report()``, reached through fedsplit's
    delegating wrappers), local DP's from the ledger's ``dp_epsilon`` column.
    """
    if cfg.privacy.mode == "local":
        return {"privacy": local_privacy(cfg, ledger)}
    report = getattr(strategy, "privacy_report", None)
    if cfg.privacy.mode == "central" and callable(report):
        return {"privacy": report()}
    return {}
