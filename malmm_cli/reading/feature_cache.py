"""A disk cache of vision features, so a second question about a video skips decoding and the ViT.

An entry is a folder named by a key made of:
- the video's content: a SHA-256 of the whole file (fingerprint.py; remembered per file, so it
  is computed once);
- the sampling settings (frames or fps, exactly; seek mode);
- the vision weights: an exact checksum of every vision parameter, their dtypes and layer types,
  the vision config and the image preprocessing, so a different model or checkpoint never reuses
  features;
- the cache format and malmm's version.
Features are stored as float16 safetensors in chunks of frames, written while the video is read,
so memory stays bounded however long the video. A writer fills a hidden `.KEY.HOST-PID-XXXX.partial`
folder and renames it into place when complete (`meta.json` marks a complete entry); a concurrent
writer of the same entry simply finds it there. When the cache grows past its size limit, the
least recently used entries are removed, and so are partial folders left by killed runs.

The cache owns only what it made: entry folders named by a key and holding its `meta.json`,
partial folders, and content-hash memos (`.content-*`). Anything else in the folder is never
touched, whatever MALMM_CACHE_DIR points at.

The cache is an optimisation: any problem with it (unwritable, read-only or full disk, damaged
entries, a concurrent `malmm cache clear`) costs one warning and the video goes on uncached.
Only vision features are cached: the Q-Former's memory depends on the instruction text, so it is
recomputed for each question (on a CPU, most of what a cached question costs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from malmm_cli import __version__
from malmm_cli.reading.fingerprint import MEMO_NAME, content_hash, weights_checksum

FORMAT = 2  # 2: plan index per frame
CHUNK_FRAMES = 64
DEFAULT_LIMIT_BYTES = 20 * 1024**3
STALE_PARTIAL_SECONDS = 6 * 3600  # a partial folder untouched this long belongs to a dead run
CHUNK_KEYS = {"indices", "targets", "times", "features"}
ENTRY_NAME = re.compile(r"^[0-9a-f]{40}$")
PARTIAL_NAME = re.compile(r"^\.(?P<key>[0-9a-f]{40})\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-[0-9a-f]+\.partial$")

log = logging.getLogger("malmm.cache")


def default_cache_dir() -> Path:
    """$MALMM_CACHE_DIR, else the platform's user cache folder (XDG on Linux)."""
    if os.environ.get("MALMM_CACHE_DIR"):
        return Path(os.environ["MALMM_CACHE_DIR"]).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "malmm"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "malmm" / "Cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "malmm"


def cache_limit() -> tuple[int, str | None]:
    """Bytes the cache may hold, from $MALMM_CACHE_SIZE in GB (default 20; 0 turns writing off),
    and a complaint about the setting if it is not a number."""
    value = os.environ.get("MALMM_CACHE_SIZE", "").strip()
    if not value:
        return DEFAULT_LIMIT_BYTES, None
    try:
        gigabytes = float(value)
        if not gigabytes >= 0 or gigabytes == float("inf"):
            raise ValueError
    except ValueError:
        return DEFAULT_LIMIT_BYTES, f"MALMM_CACHE_SIZE={value!r} is not a size in GB: using the default, 20"
    return int(gigabytes * 1024**3), None


def vision_fingerprint(model: torch.nn.Module, image_processor: object) -> str:
    """What determines the features besides the video: vision config, every weight, layer types,
    preprocessing."""
    vision = model.vision_model
    digest = hashlib.sha256()
    digest.update(vision.config.to_json_string().encode())
    digest.update(json.dumps(image_processor.to_dict(), sort_keys=True, default=str).encode())
    digest.update(",".join(type(m).__name__ for m in vision.modules()).encode())  # 8-bit layers, say
    digest.update(weights_checksum(vision).encode())
    return digest.hexdigest()


def _this_host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # no permission to signal it: it exists
        return True
    return True


def _size(folder: Path) -> int:
    try:
        return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    except OSError:
        return 0


def _described(folders: list[Path]) -> list[CacheEntry]:
    """Size and last use of each folder (those gone meanwhile are left out)."""
    found = []
    for folder in folders:
        with contextlib.suppress(OSError):
            found.append(CacheEntry(folder, _size(folder), folder.stat().st_mtime))
    return found


class CacheReadError(Exception):
    """A cached entry could not be read to the end (removed or damaged while in use)."""


@dataclass(frozen=True)
class CachedVideo:
    """A complete entry: per-frame plan indices, targets and times, what the reader reported,
    and the features."""

    folder: Path
    meta: dict

    def chunks(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(indices [F], targets [F], times [F], features [F, N, C]) per chunk, in order.

        Raises CacheReadError if a chunk cannot be read any more.
        """
        for number in range(self.meta["chunks"]):
            try:
                tensors = load_file(str(self.folder / f"chunk-{number:05d}.safetensors"))
                yield tensors["indices"], tensors["targets"], tensors["times"], tensors["features"]
            except (OSError, SafetensorError, KeyError) as error:
                raise CacheReadError(f"chunk {number} of {self.folder.name}: {error}") from error


@dataclass(frozen=True)
class CacheEntry:
    folder: Path
    size: int
    last_used: float


class FeatureCache:
    """The cache in one folder. Never raises for a cache problem: it reports it once through
    `on_problem` (default: a logging warning) and stops using the part that failed."""

    def __init__(
        self,
        folder: Path | None = None,
        limit_bytes: int | None = None,
        on_problem: Callable[[str], None] | None = None,
    ):
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.on_problem = on_problem or log.warning
        if limit_bytes is None:
            limit_bytes, complaint = cache_limit()
            if complaint:
                self.on_problem(complaint)
        self.limit = limit_bytes
        self._vision: dict[int, str] = {}
        self._reported: set[str] = set()
        self.reading = True  # turned off by a read problem other than a damaged entry
        self.writing = limit_bytes > 0  # turned off by any write problem

    def problem(self, what: str, error: BaseException | str) -> None:
        """Report a cache problem once per kind; the run goes on without that part of the cache."""
        if not isinstance(error, str):
            error = getattr(error, "strerror", None) or str(error) or type(error).__name__
        reason = error.splitlines()[0] if error else "unknown reason"
        message = f"feature cache {self.folder}: {what} ({reason})"
        if what not in self._reported:
            self._reported.add(what)
            self.on_problem(message)

    # --- keys ---------------------------------------------------------------------------------

    def vision_key(self, model: torch.nn.Module, image_processor: object) -> str:
        """The vision fingerprint of a loaded model, computed once per model."""
        if id(model) not in self._vision:
            self._vision[id(model)] = vision_fingerprint(model, image_processor)
        return self._vision[id(model)]

    def key(self, video: Path, sampling: str, vision: str) -> str | None:
        """The entry key of a video read with these settings; None if the video cannot be hashed
        (its own error is reported when it is read) or the cache is off."""
        if not (self.reading or self.writing):
            return None
        memo = self.folder if self.folder.is_dir() else None
        try:
            content = content_hash(video, memo)
        except OSError:
            return None
        text = f"{FORMAT}|{__version__}|{content}|{sampling}|{vision}"
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    # --- reading ------------------------------------------------------------------------------

    def load(self, key: str) -> CachedVideo | None:
        """The complete entry for `key`, or None (missing, incomplete or damaged: it is removed)."""
        if not self.reading:
            return None
        folder = self.folder / key
        try:
            meta = json.loads((folder / "meta.json").read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError("another format")
            for number in range(meta["chunks"]):  # headers only: cheap, and catch truncated or foreign files
                with safe_open(str(folder / f"chunk-{number:05d}.safetensors"), framework="pt") as chunk:
                    if set(chunk.keys()) != CHUNK_KEYS:
                        raise ValueError("unexpected chunk content")
        except FileNotFoundError:
            if (folder / "meta.json").exists():  # a chunk is gone
                self._remove(folder)
            return None
        except PermissionError as error:
            self.reading = False
            self.problem("cannot read it, going on without it", error)
            return None
        except (OSError, ValueError, KeyError, TypeError, SafetensorError):
            self._remove(folder)
            return None
        with contextlib.suppress(OSError):  # a read-only cache still serves its entries
            os.utime(folder)  # least-recently-used order follows the folder's modification time
        return CachedVideo(folder, meta)

    # --- writing ------------------------------------------------------------------------------

    def writer(self, key: str) -> CacheWriter | None:
        """A writer for a new entry, or None when the cache cannot be written (reported once)."""
        if not self.writing:
            return None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tag = f"{_this_host()}-{os.getpid()}-{secrets.token_hex(4)}"
            partial = self.folder / f".{key}.{tag}.partial"
            partial.mkdir()
        except OSError as error:
            self.writing = False
            self.problem("cannot write there, going on without it", error)
            return None
        return CacheWriter(self, key, partial)

    # --- what is here ---------------------------------------------------------------------------

    def _owned(self) -> tuple[list[Path], list[Path], list[Path]]:
        """(entry folders, partial folders, content memos) in the cache folder: only what it made."""
        entries, partials, memos = [], [], []
        try:
            children = list(self.folder.iterdir())
        except OSError:
            return [], [], []
        for child in children:
            try:
                if ENTRY_NAME.match(child.name) and child.is_dir() and not child.is_symlink():
                    meta = json.loads((child / "meta.json").read_text())
                    if isinstance(meta, dict) and "format" in meta and "chunks" in meta:
                        entries.append(child)
                elif PARTIAL_NAME.match(child.name) and child.is_dir() and not child.is_symlink():
                    partials.append(child)
                elif MEMO_NAME.match(child.name) and child.is_file():
                    memos.append(child)
            except (OSError, ValueError):
                continue  # not ours, or vanished meanwhile
        return entries, partials, memos

    def entries(self) -> list[CacheEntry]:
        """Complete entries, least recently used first."""
        return sorted(_described(self._owned()[0]), key=lambda entry: entry.last_used)

    def partials(self) -> list[CacheEntry]:
        """Unfinished entries: being written by a running process, or left by a killed one."""
        return _described(self._owned()[1])

    @staticmethod
    def is_stale(partial: CacheEntry, now: float | None = None) -> bool:
        """Left by a run that is gone: its process has ended (same host), or untouched for hours."""
        match = PARTIAL_NAME.match(partial.folder.name)
        if match and match["host"] == _this_host() and not _alive(int(match["pid"])):
            return True
        return (now or time.time()) - partial.last_used > STALE_PARTIAL_SECONDS

    def _remove(self, folder: Path) -> int:
        size = _size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        return 0 if folder.exists() else size

    def evict(self, keep: str | None = None) -> int:
        """Remove stale partial folders, then least recently used entries until the cache fits its
        limit. Returns bytes freed."""
        freed = sum(self._remove(p.folder) for p in self.partials() if self.is_stale(p))
        entries = self.entries()
        total = sum(entry.size for entry in entries)
        for entry in entries:
            if total <= self.limit:
                break
            if entry.folder.name != keep:
                removed = self._remove(entry.folder)
                freed += removed
                total -= removed
        return freed

    def clear(self) -> int:
        """Remove every entry, every stale partial folder and the content memos. Returns bytes freed."""
        entries, _, memos = self._owned()
        freed = sum(self._remove(folder) for folder in entries)
        freed += sum(self._remove(p.folder) for p in self.partials() if self.is_stale(p))
        for memo in memos:
            with contextlib.suppress(OSError):
                size = memo.stat().st_size
                memo.unlink()
                freed += size
        return freed


class CacheWriter:
    """Writes one entry chunk by chunk into its partial folder, renamed into place when complete.

    Never raises: a write problem is reported once, the partial folder removed, and the video
    goes on uncached.
    """

    def __init__(self, cache: FeatureCache, key: str, partial: Path):
        self.cache = cache
        self.key = key
        self.partial = partial
        self.chunks = 0
        self.failed = False
        self._pending: list[tuple[int, float, float, torch.Tensor]] = []

    def add(self, index: int, target: float, time_s: float, features: torch.Tensor) -> None:
        """One frame's features [N, C], with its place in the plan."""
        if self.failed:
            return
        self._pending.append((index, target, time_s, features.detach().to("cpu", torch.float16)))
        if len(self._pending) == CHUNK_FRAMES:
            self._guarded(self._flush)

    def _flush(self) -> None:
        if not self._pending:
            return
        indices, targets, times, features = zip(*self._pending, strict=True)
        save_file(
            {
                "indices": torch.tensor(indices, dtype=torch.int64),
                "targets": torch.tensor(targets, dtype=torch.float64),
                "times": torch.tensor(times, dtype=torch.float64),
                "features": torch.stack(features).contiguous(),
            },
            str(self.partial / f"chunk-{self.chunks:05d}.safetensors"),
        )
        self.chunks += 1
        self._pending = []

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except (OSError, SafetensorError, RuntimeError) as error:  # disk full, removed folder, permissions
            self.failed = True
            self.cache.writing = False
            self.cache.problem("cannot write there, going on without it", error)
            self.abandon()

    def commit(self, meta: dict) -> None:
        """Finish the entry: flush, write meta.json, move it into place, then keep the size limit."""
        if self.failed:
            return

        def finish() -> None:
            self._flush()
            content = {**meta, "format": FORMAT, "chunks": self.chunks, "written": time.time()}
            (self.partial / "meta.json").write_text(json.dumps(content))
            final = self.cache.folder / self.key
            try:
                os.rename(self.partial, final)
            except OSError:
                if not (final / "meta.json").is_file():
                    raise
                shutil.rmtree(self.partial, ignore_errors=True)  # a concurrent run wrote the same entry
            self.cache.evict(keep=self.key)

        self._guarded(finish)

    def abandon(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)
