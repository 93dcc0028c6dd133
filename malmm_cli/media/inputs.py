"""The inputs of a run: files, folders searched for videos, and manifests (`@FILE`) that list videos
or clips of them; how each input ended (`Outcome`); the names its results get."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from malmm_cli.media.plans import VideoError
from malmm_cli.media.sampling import Sampling

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".wmv", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts"}
    | {".3gp", ".ogv", ".mxf", ".vob"}
)


@dataclass
class Outcome:
    """How one input ended: done, partial (damaged file, result written), skipped or failed."""

    path: str
    status: str
    detail: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Input:
    """A video to process and the name of its results (relative to --output-dir, no extension);
    from a manifest, possibly a clip of it (seconds)."""

    path: Path
    stem: Path
    start: float | None = None
    end: float | None = None

    @property
    def clip(self) -> tuple[float | None, float | None]:
        return (self.start, self.end)

    @property
    def name(self) -> str:
        """How progress, stderr and the summary name it: its path, and a clip's seconds (two clips of
        one video must be told apart)."""
        if self.clip == (None, None):
            return str(self.path)
        return f"{self.path} [{self.start or 0:g}-{'end' if self.end is None else f'{self.end:g}'} s]"


def _videos_in(folder: Path) -> list[Path]:
    """Video files under `folder`, sorted; hidden entries skipped, linked folders not followed
    (so a link back up the tree cannot loop). A broken link with a video's name is kept, to fail
    with its reason rather than vanish from the batch."""
    found = []
    for root, folders, files in os.walk(folder, followlinks=False):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in files:
            path = Path(root) / name
            if (
                not name.startswith(".")
                and path.suffix.lower() in VIDEO_EXTENSIONS
                and (path.is_file() or path.is_symlink())
            ):
                found.append(path)
    return sorted(found)


def read_manifest(manifest: Path) -> tuple[list[Input], list[Outcome]]:
    """The videos a manifest lists: one path per line (`#` comments), or JSONL rows with a
    `video` and optionally `start`/`end` (seconds: a clip, named `clip_90-102`); paths relative
    to the manifest's folder, results named as for a folder of them."""
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        return [], [Outcome(f"@{manifest}", "failed", f"cannot read the manifest: {reason}")]
    inputs, failures = [], []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if manifest.suffix.lower() == ".jsonl":
            try:
                row = json.loads(text)
                video = row["video"]
            except (json.JSONDecodeError, KeyError, TypeError):
                failures.append(Outcome(f"{manifest}:{number}", "failed", 'not a JSON object with a "video"'))
                continue
            try:
                start, end = _seconds(row.get("start")), _seconds(row.get("end"))
            except (ValueError, TypeError):
                failures.append(Outcome(f"{manifest}:{number}", "failed", "start and end must be seconds, >= 0"))
                continue
            if start is not None and end is not None and end <= start:
                failures.append(Outcome(f"{manifest}:{number}", "failed", f"end ({end:g}) must be after start"))
                continue
            text = str(video)
        else:
            start = end = None
        path = manifest.parent / text  # an absolute path stays as it is
        inside = Path(os.path.relpath(path, manifest.parent))
        stem = Path(path.stem) if inside.parts[0] == ".." else inside.with_suffix("")
        if start is not None or end is not None:
            stem = stem.with_name(f"{stem.name}_{start or 0:g}-{'end' if end is None else f'{end:g}'}")
        inputs.append(Input(path, stem, start, end))
    if not inputs and not failures:
        failures.append(Outcome(f"@{manifest}", "failed", "the manifest lists no videos"))
    return inputs, failures


def clip_sampling(sampling: Sampling, item: Input) -> Sampling:
    """The run's sampling for this input: the whole video, or its clip (which needs --frames)."""
    if item.clip == (None, None):
        return sampling
    if sampling.frames is None:
        raise VideoError("a clip (start/end in the manifest) is sampled by --frames, not --fps")
    return replace(sampling, start=item.start, end=item.end)


def _seconds(value: object) -> float | None:
    if value is None or value == "":
        return None
    seconds = float(value)  # ValueError / TypeError for what is not a number
    if not (seconds >= 0 and seconds < float("inf")):
        raise ValueError(f"not a time: {value!r}")
    return seconds


def expand_inputs(paths: Sequence[Path]) -> tuple[list[Input], list[Outcome]]:
    """Files as given (whatever their extension), the videos found under folders, recursively, and
    those a manifest lists (`@FILE`, see `read_manifest`).

    A folder without videos is a failure of its own; a path given twice is read once. A file that
    cannot be read (missing, a symbolic link loop) is kept, to fail with its reason when checked.
    """
    inputs: list[Input] = []
    failures: list[Outcome] = []
    seen: set[tuple] = set()
    for path in paths:
        if str(path).startswith("@"):
            candidates, problems = read_manifest(Path(str(path)[1:]))
            failures += problems
        elif path.is_dir():
            found = _videos_in(path)
            if not found:
                extensions = ", ".join(sorted(VIDEO_EXTENSIONS)[:6])
                failures.append(Outcome(str(path), "failed", f"folder has no video files ({extensions}, ...)"))
            candidates = [Input(p, p.relative_to(path).with_suffix("")) for p in found]
        else:
            candidates = [Input(path, Path(path.stem))]
        for candidate in candidates:
            key = (Path(os.path.realpath(candidate.path)), candidate.clip)  # never raises, link loops included
            if key not in seen:
                seen.add(key)
                inputs.append(candidate)
    return inputs, failures


def name_outputs(inputs: Sequence[Input]) -> tuple[list[Input], list[str]]:
    """Inputs whose result names are unique: clip.mp4 and clip.mkv side by side keep their
    extension in the name. Returns the inputs and the clashes that remain (the same file name in
    different folders given separately), as text."""

    def clashes(items: Sequence[Input]) -> dict[Path, list[Input]]:
        owners: dict[Path, list[Input]] = {}
        for item in items:
            owners.setdefault(item.stem, []).append(item)
        return {stem: group for stem, group in owners.items() if len(group) > 1}

    clashing = {item.path for group in clashes(inputs).values() for item in group}
    named = [replace(i, stem=i.stem.with_name(i.path.name)) if i.path in clashing else i for i in inputs]
    remaining = [" and ".join(str(i.path) for i in group) for group in clashes(named).values()]
    return named, remaining
