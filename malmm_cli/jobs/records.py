"""What produced a result, so that a rerun skips a video only when its results were made the same way.

Every video written to --output-dir gets a record beside its results, in the hidden folder
`.malmm/` of the output folder (`.malmm/clip.caption.json` for `clip.caption.json`, `.srt`...).
A record holds the settings that decide the result (task and its questions, labels or spans,
model and revision, checkpoint, sampling, memory bank, precision, generation, malmm's version)
and the video's size and modification time. On a rerun, a video is skipped when its record
matches and every requested format exists; otherwise its results are made again and replaced.
The record is removed before new results are written and written after them, so a run killed in
between leaves no record that vouches for a mix of old and new files.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from malmm_cli import __version__
from malmm_cli.reading.fingerprint import content_hash

RECORDS = ".malmm"


def model_identity(model: str) -> str:
    """The model as the results depend on it: a hub id with its cached revision, or a local folder
    with its configuration and the size and time of its weight files."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        digest = hashlib.sha256()
        for file in sorted(folder.glob("*.json")) + sorted(folder.glob("*.safetensors")):
            status = file.stat()
            digest.update(f"{file.name}:{status.st_size}:{status.st_mtime_ns};".encode())
            if file.suffix == ".json" and status.st_size < 10**6:
                digest.update(file.read_bytes())
        return f"{folder.resolve()}#{digest.hexdigest()[:16]}"
    from malmm_cli.jobs.hub import cached_snapshot

    snapshot = cached_snapshot(model)
    return f"{model}@{snapshot.name}" if snapshot is not None else f"{model}@not-cached"


def file_identity(path: Path) -> str:
    """A data file by content (`sha256:` and 16 hex digits), so that an edited file is told
    from the one a run started with, whatever its path and modification time."""
    return f"sha256:{content_hash(path)[:16]}"


def checkpoint_identity(path: Path | None, memo_folder: Path | None = None) -> str | None:
    """The checkpoint's content hash (its path does not matter); None without a checkpoint."""
    if path is None:
        return None
    try:
        return content_hash(path, memo_folder)
    except OSError:
        return f"unreadable:{Path(path).resolve()}"


@dataclass(frozen=True)
class Settings:
    """The settings a task's results depend on, as plain data (they are compared, and stored)."""

    task: str
    request: dict[str, Any]  # questions, labels, segment, every, top_k: what the task was asked
    model: str
    checkpoint: str | None
    sampling: str
    memory_bank_length: int
    precision: dict[str, str]  # device type; dtype, quantize, quantize_vision as asked
    generation: dict[str, Any]
    memory: str = "malmm"  # the memory strategy (records made before there was a choice lack it)
    version: str = field(default=__version__)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_ASSUMED = {"memory": "malmm"}  # what a record without the field was made with


def _video_identity(video: Path) -> dict[str, int]:
    try:
        status = video.stat()
    except OSError:
        return {}
    return {"size": status.st_size, "mtime_ns": status.st_mtime_ns}


def record_path(output_dir: Path, stem: Path, task: str) -> Path:
    """The record of one input's results, named as they are (shortened alike: writers.output_stem)."""
    from malmm_cli.output.writers import output_stem

    fitted = output_stem(output_dir, stem, task)
    return output_dir / RECORDS / fitted.parent / f"{fitted.name}.{task}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def differences(record: dict[str, Any] | None, settings: Settings, video: Path) -> list[str]:
    """Which settings differ from those that made the recorded results (empty: the same)."""
    if record is None:
        return ["no record of how they were made"]
    changed = []
    old = record.get("settings", {})
    new = settings.to_dict()
    for name in new:
        if name == "request":
            changed += [key for key in sorted(set(old.get(name, {})) | set(new[name]))
                        if old.get(name, {}).get(key) != new[name].get(key)]  # fmt: skip
        elif old.get(name, _ASSUMED.get(name)) != new[name]:
            changed.append(name)
    if record.get("video") != _video_identity(video):
        changed.append("the video file")
    return changed


def changed_values(stored: dict[str, Any], current: dict[str, Any]) -> str:
    """`name old -> new` for each setting that differs (a resumed run's refusal says what changed)."""
    return ", ".join(f"{k} {stored.get(k)!r} -> {v!r}" for k, v in current.items() if stored.get(k) != v)


def record(settings: Settings, video: Path, formats: list[str]) -> dict[str, Any]:
    return {"settings": settings.to_dict(), "video": _video_identity(video), "formats": formats}
