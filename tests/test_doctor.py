"""`malmm doctor`: real checks on this machine, failures reported and reflected in the exit status."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from malmm_cli.cli import app
from malmm_cli.jobs import doctor
from malmm_cli.jobs.doctor import Check, run_checks


def test_checks_on_this_machine() -> None:
    rows = {check.name: check for check in run_checks()}
    for name in ("Python", "torch", "transformers", "CPU", "RAM", "OpenCV", "decode H.264", "bitsandbytes",
                 "recommended --quantize"):  # fmt: skip
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


def test_package_floors_are_the_declared_ones(monkeypatch) -> None:
    """doctor's minimum versions are pyproject's floors (it said transformers 5.0 when 5.14 was needed)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = doctor.declared_floors()  # from the installed metadata: reinstall after editing pyproject.toml
    assert {f"{name}>={floor}" for name, floor in floors.items()} == {d.split(",")[0].split()[0] for d in declared}
    assert "pytest" not in floors  # extras are not requirements of malmm
    monkeypatch.setattr(doctor, "_version", lambda package: {"transformers": "0.1"}.get(package, "99.0"))
    rows = {check.name: check for check in doctor.check_packages()}
    assert rows["transformers"].status == "fail" and f"needs >= {floors['transformers']}" in rows["transformers"].detail
    assert rows["torch"].status == "ok" and rows["huggingface-hub"].status == "ok"


def test_cpu_recommendation_follows_the_memory_plan(monkeypatch) -> None:
    """On a 24 GB CPU machine doctor recommended none, where float32 vicuna-7b needs ~35 GiB."""
    import psutil
    import torch

    if torch.cuda.is_available():
        pytest.skip("with a GPU the recommendation follows GPU memory")
    for available, expected in ((24, "8bit"), (64, "none"), (12.5, "4bit")):
        memory = psutil.virtual_memory()._replace(available=int(available * 1024**3))
        monkeypatch.setattr(psutil, "virtual_memory", lambda memory=memory: memory)
        (row,) = doctor.recommend_quantization()
        assert row.status == "ok" and row.detail.startswith(f"{expected} for vicuna-7b in float32"), row.detail
    memory = psutil.virtual_memory()._replace(available=2 * 1024**3)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: memory)
    assert doctor.recommend_quantization()[0].status == "warn"
