"""Shared fixtures: tiny random-weight models saved in Hugging Face format, and the golden file.

Nothing here imports torch, transformers or the CLI at module level: the media tests (video
probing and decoding) run in a venv without them (scripts/test_media.sh), and every fixture that
needs them imports them when it is used.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import torch

    from models import Malmm

REPO = Path(__file__).resolve().parents[1]
FAST = ["--device", "cpu", "--num-beams", "1", "--max-new-tokens", "5"]  # CLI options for quick tests
DEFAULT_GOLDEN = REPO / "tests" / "fixtures" / "malmm_lavis_golden.pt"  # see tests/fixtures/README.md


@pytest.fixture(scope="session", autouse=True)
def _private_feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests never read or fill the user's feature cache; the variable is put back afterwards
    (pytest run in-process, by an IDE or a plugin, keeps its environment)."""
    with pytest.MonkeyPatch.context() as patch:  # undone on leaving, failures included
        patch.setenv("MALMM_CACHE_DIR", str(tmp_path_factory.mktemp("feature-cache")))
        yield


@pytest.fixture(scope="session", autouse=True)
def _quiet_and_deterministic() -> Iterator[None]:
    """One thread and no progress bars for the session; both put back after it, failures included."""
    if importlib.util.find_spec("torch") is None:  # the media tests' venv: no model runs there
        yield
        return
    import torch
    from transformers.utils import logging

    threads, bars = torch.get_num_threads(), logging.is_progress_bar_enabled()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if bars:
            logging.enable_progress_bar()


@pytest.fixture(scope="session")
def golden() -> dict:
    """The reference MA-LMM outputs; MALMM_GOLDEN_FIXTURE points at another file of that format."""
    path = Path(os.environ.get("MALMM_GOLDEN_FIXTURE", DEFAULT_GOLDEN))
    if not path.is_file():
        pytest.fail(f"golden fixture not found: {path} (tests/fixtures/README.md says where it comes from)")
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    assert data["format"] == "malmm-lavis-golden-v1", data.get("format")
    return data


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", llm="llama")


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-t5", llm="t5")


@pytest.fixture(scope="session")
def tiny_malmm(tiny_llama_dir: Path) -> Malmm:
    from models import Malmm

    return Malmm.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="session")
def tiny_malmm_t5(tiny_t5_dir: Path) -> Malmm:
    from models import Malmm

    return Malmm.from_pretrained(tiny_t5_dir)


@pytest.fixture
def run(tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """Invoke malmm in-process; stdout and stderr come back separately."""
    from typer.testing import CliRunner

    from malmm_cli.cli import app

    monkeypatch.setenv("COLUMNS", "200")

    def invoke(*args: str | Path, model: bool = True):
        argv = [str(a) for a in args]
        if model:  # right after the command, so a test's own options come later and win
            argv[1:1] = ["--model", str(tiny_llama_dir), *FAST]
        return CliRunner().invoke(app, argv, catch_exceptions=False)

    return invoke


@pytest.fixture
def readouts(monkeypatch: pytest.MonkeyPatch) -> dict[tuple, torch.Tensor]:
    """What the LLM is given at each read-out of the reading loop, by (video, reader, span)."""
    from malmm_cli.reading import pipeline

    seen = {}
    answer = pipeline._answer

    def spy(malmm, pending, *args):
        for readout in pending:
            seen[(str(readout.video.path), readout.reader, readout.span)] = readout.tokens.clone()
        return answer(malmm, pending, *args)

    monkeypatch.setattr(pipeline, "_answer", spy)
    return seen
