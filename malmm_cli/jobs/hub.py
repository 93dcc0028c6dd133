"""Models on the Hugging Face hub: known presets, the local cache, offline use and downloads.

A model given by hub id is looked up in the local cache first and loaded from there without any
network call. When it is not cached and the hub cannot be reached (no network, or HF_HUB_OFFLINE
set), malmm says so at once instead of letting each file retry for about 23 s. Downloads fetch
safetensors weights only: the InstructBLIP repos also hold .bin copies that would double them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from models.presets import DEFAULT_MODEL

MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizers, processor
SKIPPED_FILES = ["*.bin", "*.pt", "*.pth", "*.h5", "*.msgpack", "*.ckpt", "*.onnx", "*.ot"]
REACH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ModelPreset:
    name: str
    repo: str
    architecture: str  # models.architectures name, for sizes and memory plans without downloading
    note: str


PRESETS = [
    ModelPreset("instructblip-vicuna-7b", DEFAULT_MODEL, "vicuna-7b", "default; MA-LMM's released checkpoints"),
    ModelPreset("instructblip-vicuna-13b", "Salesforce/instructblip-vicuna-13b", "vicuna-13b", "larger LLM"),
    ModelPreset("instructblip-flan-t5-xl", "Salesforce/instructblip-flan-t5-xl", "flan-t5-xl", "encoder-decoder"),
    ModelPreset("instructblip-flan-t5-xxl", "Salesforce/instructblip-flan-t5-xxl", "flan-t5-xxl", "encoder-decoder"),
]


@dataclass(frozen=True)
class FineTunedCheckpoint:
    """An MA-LMM fine-tuned checkpoint: not on the hub, the user passes its path with --checkpoint."""

    dataset: str
    command: str
    frames: int
    memory_bank_length: int


# From MA-LMM's evaluation scripts; all on instructblip-vicuna-7b. Files: saved_model.tar (see README).
FINE_TUNED = [
    FineTunedCheckpoint("MSR-VTT captioning", "caption", 80, 40),
    FineTunedCheckpoint("MSVD captioning", "caption", 80, 40),
    FineTunedCheckpoint("YouCook2 captioning", "caption", 80, 40),
    FineTunedCheckpoint("MSR-VTT QA", "ask", 20, 10),
    FineTunedCheckpoint("MSVD QA", "ask", 20, 10),
    FineTunedCheckpoint("ActivityNet QA", "ask", 20, 10),
    FineTunedCheckpoint("LVU", "predict --labels", 100, 20),
    FineTunedCheckpoint("Breakfast", "predict --labels", 100, 20),
    FineTunedCheckpoint("COIN", "predict --labels", 100, 20),
]


class ModelUnavailable(Exception):
    """The model cannot be had here; the message says which and what to do."""


def find_preset(name: str) -> ModelPreset | None:
    """A preset by short name (vicuna-7b, instructblip-vicuna-7b) or hub id."""
    for preset in PRESETS:
        if name in (preset.name, preset.repo, preset.architecture):
            return preset
    return None


def endpoint() -> str | None:
    """The hub address, read when called (huggingface_hub reads HF_ENDPOINT only at import)."""
    return os.environ.get("HF_ENDPOINT") or None


def offline_requested() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return constants.HF_HUB_OFFLINE or flag in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def is_complete(folder: Path) -> bool:
    """A model folder with its config and every safetensors shard its index names."""
    if not (folder / "config.json").is_file():
        return False
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        return all((folder / shard).is_file() for shard in shards)
    return (folder / "model.safetensors").is_file()


def cached_snapshot(repo: str) -> Path | None:
    """The complete cached copy of a hub model, found without touching the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:  # same patterns as download(): huggingface_hub judges completeness on the files we fetch
        folder = Path(
            snapshot_download(
                repo,
                local_files_only=True,
                cache_dir=cache_dir(),
                allow_patterns=MODEL_FILES,
                ignore_patterns=SKIPPED_FILES,
            )
        )
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if is_complete(folder) else None


def check_reachable(repo: str) -> None:
    """Raise ModelUnavailable at once when the hub cannot be reached or has no such model."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if offline_requested():
        raise ModelUnavailable(
            f"{repo} is not a folder here, nor in the Hugging Face cache ({cache_dir()}), and HF_HUB_OFFLINE is set: "
            f"download it with `malmm models download {repo}` where there is network, or pass --model FOLDER"
        )
    try:
        HfApi(endpoint=endpoint()).model_info(repo, timeout=REACH_TIMEOUT_S)
    except GatedRepoError as error:
        raise ModelUnavailable(f"{repo} is gated on the hub: log in with `hf auth login` first") from error
    except RepositoryNotFoundError as error:
        raise ModelUnavailable(f"{repo} is neither a local folder nor a model on the Hugging Face hub") from error
    except Exception as error:  # connection refused, DNS failure, timeout, proxy errors...
        raise ModelUnavailable(
            f"{repo} is not a folder here, nor in the Hugging Face cache ({cache_dir()}), and the hub cannot be "
            f"reached ({type(error).__name__}): download it with `malmm models download {repo}` where there is "
            "network, or pass --model FOLDER"
        ) from error


def download(repo: str, progress_class: type | None = None) -> Path:
    """Fetch a model's config, tokenizers and safetensors weights (never the .bin copies).

    Call check_reachable first: without a network this would retry each file for ~23 s.
    """
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo,
        allow_patterns=MODEL_FILES,
        ignore_patterns=SKIPPED_FILES,
        cache_dir=cache_dir(),
        endpoint=endpoint(),
        tqdm_class=progress_class,
    )
    path = Path(folder)
    if not is_complete(path):
        raise ModelUnavailable(f"{repo} downloaded, but it has no safetensors weights malmm can load")
    return path


DownloadProgress = Callable[[str], AbstractContextManager[type | None]]


def resolve(model: str, progress: DownloadProgress | None = None) -> Path:
    """A local folder holding the model: the folder given, the cached copy, or a fresh download.

    progress(repo) wraps a download and yields a tqdm-compatible class for huggingface_hub.
    """
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelUnavailable(f"{folder} is a folder but holds no model (no config.json)")
        return folder
    if model.count("/") != 1 or model.startswith((".", "/", "~")):
        raise ModelUnavailable(f"{model} is neither a model folder nor a hub id like {DEFAULT_MODEL}")
    cached = cached_snapshot(model)
    if cached is not None:
        return cached
    check_reachable(model)  # fail at once, before any progress bar is drawn
    with (progress or (lambda _: nullcontext(None)))(model) as progress_class:
        return download(model, progress_class)


@dataclass(frozen=True)
class CachedModel:
    repo: str
    size_bytes: int
    complete: bool


def cached_models() -> list[CachedModel]:
    """InstructBLIP-family models in the local Hugging Face cache."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir())
    except (CacheNotFound, OSError, ValueError):  # ValueError: the cache path is a file
        return []
    found = []
    for repo in info.repos:
        if repo.repo_type != "model" or "instructblip" not in repo.repo_id.lower():
            continue
        complete = any(is_complete(Path(revision.snapshot_path)) for revision in repo.revisions)
        found.append(CachedModel(repo.repo_id, repo.size_on_disk, complete))
    return sorted(found, key=lambda m: m.repo)


@dataclass(frozen=True)
class ListedModel:
    """A row of `malmm models list`: a preset (with its size, from its architecture) or another
    InstructBLIP model found in the cache (size on disk only)."""

    name: str
    repo: str
    parameters: int | None  # None: not a preset, its architecture is unknown here
    size_bytes: int  # to download (float32 weights), or on disk for a cached non-preset
    cached: str  # "yes", "no" or "incomplete"
    note: str


def list_models() -> list[ListedModel]:
    """The presets, then the other InstructBLIP models in the local cache."""
    from models.architectures import architecture
    from models.memory_plan import count_parameters

    cached = {model.repo: model for model in cached_models()}
    rows = []
    for preset in PRESETS:
        counts = count_parameters(architecture(preset.architecture))
        params = counts.vision_linear + counts.vision_other + counts.qformer + counts.llm_linear + counts.llm_other
        found = cached.get(preset.repo)
        state = "no" if found is None else ("yes" if found.complete else "incomplete")
        rows.append(ListedModel(preset.name, preset.repo, params, params * 4, state, preset.note))
    for repo, model in cached.items():
        if all(preset.repo != repo for preset in PRESETS):
            state = "yes" if model.complete else "incomplete"
            rows.append(ListedModel("", repo, None, model.size_bytes, state, "in cache"))
    return rows


@dataclass(frozen=True)
class Download:
    repo: str
    folder: Path
    already_cached: bool


def download_model(name: str, progress: DownloadProgress | None = None) -> Download:
    """Download a preset (by name) or any hub id into the Hugging Face cache, unless it is there.
    Raises SetupError for a name that is neither, ModelUnavailable when the hub cannot give it."""
    from malmm_cli.jobs.errors import SetupError

    preset = find_preset(name)
    repo = preset.repo if preset else name
    if preset is None and name.count("/") != 1:
        raise SetupError(f"unknown model {name!r}: use a name from `malmm models list` or a hub id (owner/name)")
    cached = cached_snapshot(repo)
    if cached is not None:
        return Download(repo, cached, already_cached=True)
    check_reachable(repo)
    with (progress or (lambda _: nullcontext(None)))(repo) as progress_class:
        return Download(repo, download(repo, progress_class), already_cached=False)
