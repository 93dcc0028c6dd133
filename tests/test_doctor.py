"""`malmm doctor`: real checks on this machine, failures reported and reflected in the exit status."""

from __future__ import annotations

from typer.testing import CliRunner

from malmm_cli import doctor
from malmm_cli.cli import app
from malmm_cli.doctor import Check, run_checks


def test_checks_on_this_machine() -> None:
    rows = {check.name: check for check in run_checks()}
    for name in ("Python", "torch", "transformers", "OpenCV", "decode H.264", "bitsandbytes", "recommended --quantize"):
        assert name in rows, name
    assert rows["decode H.264"].status == "ok" and "8 of 8" in rows["decode H.264"].detail
    assert rows["OpenCV"].status == "ok"
    assert all(check.status in ("ok", "warn", "fail", "info") for check in rows.values())


def test_a_crashing_check_is_a_failure_not_a_traceback() -> None:
    def check_broken() -> list[Check]:
        raise RuntimeError("driver exploded")

    rows = run_checks([doctor.check_python, check_broken])
    assert rows[-1] == Check("broken", "fail", "RuntimeError: driver exploded")


def test_exit_status(monkeypatch) -> None:
    runner = CliRunner()
    monkeypatch.setattr(doctor, "CHECKS", [doctor.check_python, doctor.check_packages])
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert "Python" in result.stdout and "transformers" in result.stdout
    monkeypatch.setattr(doctor, "CHECKS", [doctor.check_python, lambda: [Check("decode H.264", "fail", "no")]])
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    assert "missing or broken: decode H.264" in result.stdout
