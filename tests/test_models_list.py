"""`malmm models list`: the presets and what the local Hugging Face cache holds, without network."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from malmm_cli.jobs.hub import FINE_TUNED, PRESETS
from tests.fake_hub import fill_cache

VICUNA_7B = "Salesforce/instructblip-vicuna-7b"
FLAN_T5_XL = "Salesforce/instructblip-flan-t5-xl"
FINE_TUNE = "someone/instructblip-vicuna-7b-msrvtt"  # a fine-tuned InstructBLIP on the hub, not a preset


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache of this test's own (the folder does not exist yet), and no network."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network used: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def listed(run) -> tuple[dict[str, list[str]], str]:
    """(the rows of both tables by their key column: hub id, or dataset; the whole output)."""
    result = run("models", "list", model=False)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    rows = {}
    for line in result.stdout.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│").split("│")]
            key = cells[1] if len(cells) == 6 else cells[0]  # the models table, or the checkpoints one
            assert key not in rows, f"listed twice: {key}"
            rows[key] = cells
    return rows, result.stdout


def cached_column(rows: dict[str, list[str]]) -> dict[str, str]:
    return {key: cells[4] for key, cells in rows.items() if len(cells) == 6}


def test_empty_cache_lists_every_preset_as_not_cached(run, hf_cache: Path) -> None:
    rows, output = listed(run)
    assert cached_column(rows) == {preset.repo: "no" for preset in PRESETS}
    assert rows[VICUNA_7B] == ["instructblip-vicuna-7b", VICUNA_7B, "7.9 B", "~32 GB", "no",
                               "default; MA-LMM's released checkpoints"]  # fmt: skip
    assert f"cache: {hf_cache}  (download: malmm models download NAME)" in output
    for checkpoint in FINE_TUNED:  # MA-LMM's released checkpoints, with the settings they were trained at
        assert rows[checkpoint.dataset] == [checkpoint.dataset, f"malmm {checkpoint.command}",
                                            str(checkpoint.frames), str(checkpoint.memory_bank_length)]  # fmt: skip
    assert rows["MSR-VTT QA"] == ["MSR-VTT QA", "malmm ask", "20", "10"]


def test_cached_presets_are_marked_complete_or_not(run, hf_cache: Path, tiny_llama_dir: Path) -> None:
    snapshot = fill_cache(hf_cache, VICUNA_7B, tiny_llama_dir)
    older = snapshot.parent / ("f" * 40)  # an older revision beside it, its download never finished
    older.mkdir()
    (older / "config.json").write_bytes((snapshot / "config.json").read_bytes())
    fill_cache(hf_cache, FLAN_T5_XL, tiny_llama_dir, skip=("model.safetensors",))  # an interrupted download
    rows, _ = listed(run)
    expected = {preset.repo: "no" for preset in PRESETS} | {VICUNA_7B: "yes", FLAN_T5_XL: "incomplete"}
    assert cached_column(rows) == expected


def test_cached_fine_tuned_models_are_listed_too(run, hf_cache: Path, tiny_llama_dir: Path) -> None:
    """Any InstructBLIP in the cache is listed with its size on disk, complete or not; other
    models in the cache are not malmm's and are left out."""
    snapshot = fill_cache(hf_cache, FINE_TUNE, tiny_llama_dir)
    with (snapshot / "model-00002-of-00002.safetensors").open("wb") as shard:
        shard.truncate(2_400_000_000)  # sparse: a real model's size on disk without writing it
    fill_cache(hf_cache, "someone/instructblip-half-downloaded", tiny_llama_dir, skip=("model.safetensors",))
    fill_cache(hf_cache, "someone/gpt2-chat", tiny_llama_dir)
    rows, _ = listed(run)
    assert rows[FINE_TUNE] == ["", FINE_TUNE, "", "2.4 GB", "yes", "in cache"]  # and the tiny model's 2 MB
    assert rows["someone/instructblip-half-downloaded"][4] == "incomplete"
    assert "someone/gpt2-chat" not in rows
    assert cached_column(rows) == {preset.repo: "no" for preset in PRESETS} | {
        FINE_TUNE: "yes", "someone/instructblip-half-downloaded": "incomplete"}  # fmt: skip


def test_an_unreadable_cache_lists_nothing_as_cached(run, hf_cache: Path) -> None:
    """A cache path that is a file (a mistyped HF_HUB_CACHE) is not an error for a listing."""
    hf_cache.write_text("not a folder")
    rows, _ = listed(run)
    assert cached_column(rows) == {preset.repo: "no" for preset in PRESETS}
