"""Per-round, per-client ledgers and the summaries derived from them."""

from fedsplit.ledger.ledger import STATUSES, Ledger, LedgerRow, RoundRecord, terminal_statuses

__all__ = ["STATUSES", "Ledger", "LedgerRow", "RoundRecord", "terminal_statuses"]
