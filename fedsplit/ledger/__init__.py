"""Per-round, per-client ledgers and the summaries derived from them."""

from fedsplit.ledger.ledger import STATUSES, Ledger, LedgerRow, RoundRecord, phase_duration

__all__ = ["STATUSES", "Ledger", "LedgerRow", "RoundRecord", "phase_duration"]
