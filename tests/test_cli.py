"""The root ``sims`` command: usage errors and SIMS errors are one readable message, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from sims.cli import main


def test_missing_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "build"]) == 2
    err = capsys.readouterr().err
    assert "Missing option" in err and "Traceback" not in err


def test_sims_error_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "info", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no bank at") and "\n" not in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group in ("index", "serve", "train", "canvas", "eval"):
        assert group in out
