"""Reports: run folder, CSVs, plots, console progress and tables."""

from fedsplit.report.console import RoundProgress, print_summary, table_console
from fedsplit.report.run_folder import fresh_folder, make_run_dir, shown_path, summarize, write_run_folder

__all__ = ["RoundProgress", "fresh_folder", "make_run_dir", "print_summary", "shown_path", "summarize", "table_console", "write_run_folder"]
