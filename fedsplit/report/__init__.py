"""Reports: run folder, CSVs, plots, console progress and tables."""

from typing import TYPE_CHECKING

from fedsplit.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from fedsplit.report.console import RoundProgress, print_summary, table_console
    from fedsplit.report.run_folder import fresh_folder, make_run_dir, shown_path, summarize, write_run_folder

# imported on first use (fedsplit.lazy_exports): this package's light submodules stay light
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "RoundProgress": "fedsplit.report.console",
        "fresh_folder": "fedsplit.report.run_folder",
        "make_run_dir": "fedsplit.report.run_folder",
        "print_summary": "fedsplit.report.console",
        "shown_path": "fedsplit.report.run_folder",
        "summarize": "fedsplit.report.run_folder",
        "table_console": "fedsplit.report.console",
        "write_run_folder": "fedsplit.report.run_folder",
    },
)

__all__ = ["RoundProgress", "fresh_folder", "make_run_dir", "print_summary", "shown_path", "summarize", "table_console", "write_run_folder"]
