"""Device, dtype and quantization choices, and the one-line error when a model will not fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from malmm_cli.jobs import loading
from malmm_cli.jobs.errors import SetupError
from malmm_cli.jobs.loading import LoadOptions, choose_dtype, plan, resolve_device
from models.architectures import architecture
from models.memory_plan import GIB


def test_devices() -> None:
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SetupError, match="CUDA is not available"):
            resolve_device("cuda:0")
        assert resolve_device("auto") in ("cpu", "mps")
    with pytest.raises(SetupError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_dtypes() -> None:
    assert choose_dtype("cpu", "llama") is torch.float32
    assert choose_dtype("cpu", "t5") is torch.float32
    assert choose_dtype("cuda", "llama") is torch.float16
    assert choose_dtype("cpu", "llama", "bfloat16") is torch.bfloat16
    with pytest.raises(SetupError, match="unknown dtype"):
        choose_dtype("cpu", "llama", "float8")


def test_auto_quantization_follows_free_gpu_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    config = architecture("vicuna-7b")
    options = LoadOptions(model="Salesforce/instructblip-vicuna-7b")
    for free_gib, expected in ((40, "none"), (13, "8bit"), (9.5, "4bit")):
        monkeypatch.setattr(loading, "free_memory", lambda device, free=free_gib: int(free * GIB))
        mode, memory = plan(config, options, "cuda", torch.float16)
        assert mode == expected and memory.total <= free_gib * GIB


def test_auto_on_cpu_is_the_most_precise_that_fits_in_ram(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a 24 GB machine float32 vicuna-7b needs ~34 GiB: auto used to pick none anyway."""
    config = architecture("vicuna-7b")
    for free_gib, expected in ((64, "none"), (20, "8bit"), (12.5, "4bit")):
        monkeypatch.setattr(loading, "free_memory", lambda device, free=free_gib: int(free * GIB))
        mode, memory = plan(config, LoadOptions(model="m"), "cpu", torch.float32)
        assert mode == expected and memory.total <= free_gib * GIB, free_gib


def test_too_big_says_what_would_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "free_memory", lambda device: 8 * GIB)
    options = LoadOptions(model="Salesforce/instructblip-vicuna-7b", quantize="8bit")
    with pytest.raises(SetupError) as error:
        plan(architecture("vicuna-7b"), options, "cuda:0", torch.float16)
    message = str(error.value)
    assert "\n" not in message and "8.0 GiB of cuda:0 is free" in message
    assert "--quantize 4bit --quantize-vision 8bit" in message
    monkeypatch.setattr(loading, "free_memory", lambda device: 1 * GIB)
    with pytest.raises(SetupError, match="no setting fits here"):
        plan(architecture("vicuna-7b"), options, "cuda:0", torch.float16)


def test_cpu_ram_is_checked_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "free_memory", lambda device: 16 * GIB)
    with pytest.raises(SetupError, match=r"of RAM is free.*--quantize 8bit"):
        plan(architecture("vicuna-7b"), LoadOptions(model="m", quantize="none"), "cpu", torch.float32)


def test_load_tiny_model(tiny_llama_dir) -> None:
    malmm, mode, memory = loading.load(LoadOptions(model=str(tiny_llama_dir), device="cpu"), tiny_llama_dir)
    assert mode == "none" and malmm.device == torch.device("cpu")
    assert memory.total < 1 * GIB


def test_the_bank_is_planned_for_the_frames_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """-b 100000 --frames 20 planned 100,000 slots (5.9 GiB more on vicuna-7b) for a bank that
    holds 20 at most: with a real model that drove --quantize auto to 4bit, or a refusal."""
    monkeypatch.setattr(loading, "free_memory", lambda device: 40 * GIB)
    config = architecture("vicuna-7b")
    huge = LoadOptions(model="m", memory_bank_length=100_000, frames=20)
    twenty = LoadOptions(model="m", memory_bank_length=20)
    assert plan(config, huge, "cuda", torch.float16) == plan(config, twenty, "cuda", torch.float16)
    assert plan(config, huge, "cuda", torch.float16)[0] == "none"
    with pytest.raises(SetupError):  # --fps: as many frames as the video is long, so the whole bank
        plan(config, dataclasses.replace(huge, frames=None), "cuda", torch.float16)
