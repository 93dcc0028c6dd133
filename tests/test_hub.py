"""Models by hub id: from the cache without network, offline errors at once, safetensors-only downloads."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest

from malmm_cli.jobs import hub
from tests.fake_hub import FakeHub, fill_cache

REPO = "Salesforce/instructblip-vicuna-7b"


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def hub_repo(tiny_llama_dir: Path, tmp_path: Path) -> Path:
    """The tiny model as a hub repo holds it: safetensors and a .bin copy of the weights."""
    folder = tmp_path / "repo"
    shutil.copytree(tiny_llama_dir, folder)
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 4096)
    return folder


def test_cached_model_resolves_without_network(hf_cache, tiny_llama_dir, no_network) -> None:
    snapshot = fill_cache(hf_cache, REPO, tiny_llama_dir)
    assert hub.resolve(REPO) == snapshot


def test_incomplete_cache_is_not_used(hf_cache, tiny_llama_dir, monkeypatch) -> None:
    fill_cache(hf_cache, REPO, tiny_llama_dir, skip=("model.safetensors",))
    assert hub.cached_snapshot(REPO) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.ModelUnavailable, match="HF_HUB_OFFLINE"):
        hub.resolve(REPO)


def test_offline_and_not_cached_fails_at_once(hf_cache, monkeypatch, no_network) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(hub.ModelUnavailable) as error:
        hub.resolve(REPO)
    assert time.monotonic() - started < 2
    message = str(error.value)
    assert REPO in message and f"malmm models download {REPO}" in message and "\n" not in message


def test_unreachable_hub_fails_at_once(hf_cache, monkeypatch) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(hub.ModelUnavailable, match="cannot be reached"):
        hub.resolve(REPO)
    with pytest.raises(hub.ModelUnavailable, match="runs/missing is not a folder here, nor in the Hugging Face"):
        hub.resolve("runs/missing")  # a mistyped folder looks like a hub id: say both
    assert time.monotonic() - started < 10


def test_download_fetches_safetensors_only(hf_cache, hub_repo, monkeypatch) -> None:
    with FakeHub({REPO: hub_repo}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        folder = hub.resolve(REPO)
        fetched = fake.fetched()
    assert "model.safetensors" in fetched and "config.json" in fetched
    assert "qformer_tokenizer/tokenizer.json" in fetched and "preprocessor_config.json" in fetched
    assert "pytorch_model.bin" not in fetched
    assert not any("pytorch_model.bin" in path for _, path in fake.requests)
    assert hub.is_complete(folder) and not (folder / "pytorch_model.bin").exists()
    assert hub.cached_snapshot(REPO) == folder  # the next run needs no network
    assert [m.repo for m in hub.cached_models()] == [REPO]


def test_unknown_repo_and_bad_names(hf_cache, hub_repo, monkeypatch, tmp_path) -> None:
    with FakeHub({REPO: hub_repo}) as fake:
        monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
        with pytest.raises(hub.ModelUnavailable, match="neither a local folder nor a model"):
            hub.resolve("nobody/no-such-model")
    with pytest.raises(hub.ModelUnavailable, match="neither a model folder nor a hub id"):
        hub.resolve("./missing-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(hub.ModelUnavailable, match=r"no config\.json"):
        hub.resolve(str(tmp_path / "empty"))


def test_presets_by_any_name() -> None:
    for name in ("instructblip-vicuna-7b", "vicuna-7b", REPO):
        assert hub.find_preset(name).repo == REPO
    assert hub.find_preset("nope") is None


def test_the_model_jobs_run_from_python_without_a_terminal(monkeypatch, tmp_path: Path) -> None:
    """`malmm models list` and `download` are thin: their jobs answer plain values (issue 26)."""
    from malmm_cli.jobs.errors import SetupError
    from malmm_cli.jobs.hub import PRESETS, download_model, list_models

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    rows = list_models()
    assert [row.repo for row in rows] == [preset.repo for preset in PRESETS]
    assert all(row.cached == "no" and row.parameters > 1e9 and row.size_bytes == 4 * row.parameters for row in rows)
    with pytest.raises(SetupError, match="unknown model 'nonsense'"):
        download_model("nonsense")
