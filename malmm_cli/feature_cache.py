"""A disk cache of vision features, so a second question about a video skips decoding and the ViT.

An entry is a folder named by a key made of:
- the video's content: size, modification time, and a hash of a few byte ranges spread over it;
- the sampling settings (frames or fps, seek mode);
- the vision weights: a fingerprint of the vision config, some of its weights, its precision and
  the image preprocessing, so a different model or checkpoint never reuses features.
Features are stored as float16 safetensors in chunks of frames, written while the video is read,
so memory stays bounded however long the video. `meta.json` is written last and marks the entry
complete; an entry without it, or one that fails to load, is ignored and rebuilt. When the cache
grows past its size limit, the least recently used entries are removed.

Only vision features are cached: the Q-Former's memory depends on the instruction text, so it is
recomputed for each question (it is cheap).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

FORMAT = 1
CHUNK_FRAMES = 64
DEFAULT_LIMIT_BYTES = 20 * 1024**3
SAMPLED_RANGES = 8  # byte ranges hashed, besides the first and last
RANGE_BYTES = 64 * 1024


def default_cache_dir() -> Path:
    """$MALMM_CACHE_DIR, else the platform's user cache folder (XDG on Linux)."""
    if os.environ.get("MALMM_CACHE_DIR"):
        return Path(os.environ["MALMM_CACHE_DIR"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "malmm"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "malmm" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "malmm"


def cache_limit() -> int:
    """Bytes the cache may hold: $MALMM_CACHE_SIZE in GB (e.g. 50), default 20."""
    value = os.environ.get("MALMM_CACHE_SIZE")
    try:
        return int(float(value) * 1024**3) if value else DEFAULT_LIMIT_BYTES
    except ValueError:
        return DEFAULT_LIMIT_BYTES


def video_fingerprint(path: Path) -> str:
    """Size, modification time and a hash of the first, last and evenly spaced byte ranges."""
    stat = path.stat()
    digest = hashlib.blake2b(f"{stat.st_size}:{stat.st_mtime_ns}".encode(), digest_size=16)
    starts = {0, max(0, stat.st_size - RANGE_BYTES)}
    starts |= {stat.st_size * (i + 1) // (SAMPLED_RANGES + 1) for i in range(SAMPLED_RANGES)}
    with path.open("rb") as handle:
        for start in sorted(starts):
            handle.seek(start)
            digest.update(handle.read(RANGE_BYTES))
    return digest.hexdigest()


def vision_fingerprint(model: torch.nn.Module, image_processor: object) -> str:
    """What determines the features besides the video: vision config, weights, precision, preprocessing."""
    vision = model.vision_model
    digest = hashlib.blake2b(digest_size=16)
    digest.update(vision.config.to_json_string().encode())
    digest.update(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode())
    tensors = [
        vision.embeddings.patch_embedding.weight,
        vision.embeddings.position_embedding,
        vision.post_layernorm.weight,
        vision.post_layernorm.bias,
        vision.encoder.layers[-1].layer_norm2.weight,
    ]
    for tensor in tensors:  # small tensors: cheap to hash, and a fine-tuned checkpoint changes them
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    last = vision.encoder.layers[-1].mlp.fc2.weight  # a quantized ViT hashes its 8-bit weights
    digest.update(f"{type(vision.encoder.layers[-1].mlp.fc2).__name__}:{last.dtype}".encode())
    digest.update(last.detach().flatten()[:4096].float().cpu().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedVideo:
    """A complete entry: per-frame targets and times, what the reader reported, and the features."""

    folder: Path
    meta: dict

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(targets [F], times [F], features [F, N, C]) per chunk, in order."""
        for index in range(self.meta["chunks"]):
            tensors = load_file(str(self.folder / f"chunk-{index:05d}.safetensors"))
            yield tensors["targets"], tensors["times"], tensors["features"]


class FeatureCache:
    def __init__(self, folder: Path | None = None, limit_bytes: int | None = None):
        self.folder = folder or default_cache_dir()
        self.limit = cache_limit() if limit_bytes is None else limit_bytes
        self._vision: dict[int, str] = {}

    def vision_key(self, model: torch.nn.Module, image_processor: object) -> str:
        """The vision fingerprint of a loaded model, computed once per model."""
        if id(model) not in self._vision:
            self._vision[id(model)] = vision_fingerprint(model, image_processor)
        return self._vision[id(model)]

    def key(self, video: Path, sampling: str, vision: str) -> str:
        digest = hashlib.blake2b(f"{FORMAT}|{video_fingerprint(video)}|{sampling}|{vision}".encode(), digest_size=20)
        return digest.hexdigest()

    def load(self, key: str) -> CachedVideo | None:
        """The complete entry for `key`, or None (missing, incomplete or damaged: it is removed)."""
        folder = self.folder / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                raise ValueError("old format")
            for index in range(meta["chunks"]):  # headers only: cheap, and catch truncated or foreign files
                with safe_open(str(folder / f"chunk-{index:05d}.safetensors"), framework="pt") as chunk:
                    if set(chunk.keys()) != {"targets", "times", "features"}:
                        raise ValueError("unexpected chunk content")
        except FileNotFoundError:
            if (folder / "meta.json").exists():  # a chunk is gone
                shutil.rmtree(folder, ignore_errors=True)
            return None
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            shutil.rmtree(folder, ignore_errors=True)
            return None
        os.utime(folder)  # least-recently-used order follows the folder's modification time
        return CachedVideo(folder, meta)

    def discard(self, key: str) -> None:
        shutil.rmtree(self.folder / key, ignore_errors=True)

    def writer(self, key: str) -> CacheWriter:
        return CacheWriter(self, key)

    def entries(self) -> list[tuple[Path, int, float]]:
        """(folder, bytes, last used) of every entry, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for folder in self.folder.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
                found.append((folder, size, folder.stat().st_mtime))
        return sorted(found, key=lambda entry: entry[2])

    def evict(self, keep: str | None = None) -> int:
        """Remove least recently used entries until the cache fits its limit. Returns bytes freed."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        freed = 0
        for folder, size, _ in entries:
            if total - freed <= self.limit:
                break
            if folder.name != keep:
                shutil.rmtree(folder, ignore_errors=True)
                freed += size
        return freed

    def clear(self) -> int:
        freed = sum(size for _, size, _ in self.entries())
        for folder, _, _ in self.entries():
            shutil.rmtree(folder, ignore_errors=True)
        for partial in self.folder.glob(".*.partial") if self.folder.is_dir() else []:
            shutil.rmtree(partial, ignore_errors=True)
        return freed


class CacheWriter:
    """Writes one entry chunk by chunk into a hidden folder, renamed into place when complete."""

    def __init__(self, cache: FeatureCache, key: str):
        self.cache = cache
        self.key = key
        cache.folder.mkdir(parents=True, exist_ok=True)
        self.partial = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=cache.folder))
        self.chunks = 0
        self._pending: list[tuple[float, float, torch.Tensor]] = []

    def add(self, target: float, time_s: float, features: torch.Tensor) -> None:
        """One frame's features [N, C]."""
        self._pending.append((target, time_s, features.detach().to("cpu", torch.float16)))
        if len(self._pending) == CHUNK_FRAMES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        targets, times, features = zip(*self._pending, strict=True)
        save_file(
            {
                "targets": torch.tensor(targets, dtype=torch.float64),
                "times": torch.tensor(times, dtype=torch.float64),
                "features": torch.stack(features).contiguous(),
            },
            str(self.partial / f"chunk-{self.chunks:05d}.safetensors"),
        )
        self.chunks += 1
        self._pending = []

    def commit(self, meta: dict) -> None:
        """Finish the entry: flush, write meta.json, move it into place, then keep the size limit."""
        self._flush()
        meta = {**meta, "format": FORMAT, "chunks": self.chunks, "written": time.time()}
        (self.partial / "meta.json").write_text(json.dumps(meta))
        final = self.cache.folder / self.key
        shutil.rmtree(final, ignore_errors=True)
        os.replace(self.partial, final)
        self.cache.evict(keep=self.key)

    def abandon(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
