"""Paths printed by the experiments are relative to the working directory when they can be."""

from __future__ import annotations

from pathlib import Path

from fedsplit.report import shown_path


def test_shown_path_is_relative_below_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert shown_path(tmp_path / "results" / "fig.csv") == str(Path("results") / "fig.csv")
    outside = tmp_path.parent / "elsewhere.csv"
    assert shown_path(outside) == str(outside.resolve())
