"""File names are data: how a name is shown to a person, kept in results, and fitted to the disk.

A file may be named with anything the file system allows: bytes that are not UTF-8 (Python hands
them over as lone surrogates, os.fsdecode's surrogateescape), terminal control sequences, a
newline. Printed raw, such a name clears the screen, retitles the terminal or splits a message in
two, and written to a UTF-8 file it fails the write. So:

- `shown` is the one rule for showing a name (or a message holding one) to a person: control
  characters, line and bidirectional-text breaks are escaped visibly (`\\x1b`, `\\n`, `\\u202e`),
  and each byte that is not UTF-8 shows as `\\xff`. Used for stderr, progress, the summary, the
  txt header and HTML.
- `lossless` is how a result names its file: exactly, or, when the name is not UTF-8, as shown
  plus its bytes in base64, so a program can still find the file.
- `fit_stem` and `temporary_name` keep output names within the file system's limit on a name's
  length (NAME_MAX, 255 bytes on most), shortening a long one with a stable hash (a rerun finds
  the same name, so resume works), and never making a temporary name longer than its final one.

No torch, typer or rich here: anything may import it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import unicodedata
from pathlib import Path

NAME_MAX = 255  # bytes in one path component, where the file system does not say
HASH_LENGTH = 12  # hex digits of the hash that marks a shortened name
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Characters that reorder the text around them ("Trojan source"): a name could pose as another.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte os.fsdecode could not decode: show the byte
        return f"\\x{code - 0xDC00:02x}"
    if char in _NAMED:
        return _NAMED[char]
    category = unicodedata.category(char)
    if category == "Cc":  # C0, DEL and C1 controls (ESC, BEL, CSI...)
        return f"\\x{code:02x}"
    if category in ("Cs", "Zl", "Zp") or char in _BIDI:
        return f"\\u{code:04x}"
    return char


def shown(name: str | bytes | os.PathLike) -> str:
    """A name (or a one-line message holding names) as a person should see it: printable, on one
    line, every byte of the file name still told apart. Idempotent: what it returns it keeps."""
    text = os.fsdecode(name) if isinstance(name, bytes | os.PathLike) else str(name)
    if text.isprintable():
        return text
    return "".join(_escaped(char) for char in text)


def is_utf8(name: str) -> bool:
    """Whether the name can be written as UTF-8 text (no undecodable bytes from the file system)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def lossless(name: str, key: str = "file") -> dict[str, str]:
    """How a result names its file: `{key: name}`; when the name is not UTF-8, `key` holds it as
    `shown` and `{key}_base64` its bytes (base64 of os.fsencode), which decode back to the name."""
    if is_utf8(name):
        return {key: name}
    return {key: shown(name), f"{key}_base64": base64.b64encode(os.fsencode(name)).decode("ascii")}


def from_base64(data: str) -> str:
    """The file name a `*_base64` field holds, as Python's os functions take it."""
    return os.fsdecode(base64.b64decode(data, validate=True))


def name_max(folder: Path) -> int:
    """The longest name, in bytes, the file system of `folder` (or of its nearest existing
    parent: an output folder may not be made yet) allows."""
    place = Path(folder).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        return int(os.pathconf(place, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):  # not POSIX, or the file system will not say
        return NAME_MAX


def _cut(raw: bytes, size: int) -> bytes:
    """The first `size` bytes, not splitting a UTF-8 character."""
    size = max(size, 0)
    if size >= len(raw):
        return raw
    while size > 0 and 0x80 <= raw[size] <= 0xBF:  # the next byte continues a character: leave it whole
        size -= 1
    return raw[:size]


def fit_stem(stem: str, reserve: int, limit: int) -> str:
    """`stem` if `reserve` more bytes (the suffixes to come) still fit in `limit`; else its start
    and a hash of the whole stem (`long-na~0123456789ab`): the same stem gives the same name on a
    rerun, and two stems that share their start still get different names."""
    raw = os.fsencode(stem)
    if len(raw) + reserve <= limit:
        return stem
    digest = hashlib.sha256(raw).hexdigest()[:HASH_LENGTH]
    return os.fsdecode(_cut(raw, limit - reserve - HASH_LENGTH - 1)) + "~" + digest


def fit_path(folder: Path, stem: Path, reserve: int) -> Path:
    """`stem` (relative, mirrored below `folder`) with every part within the file system's limit,
    the last leaving `reserve` bytes for the suffixes of its files."""
    limit = name_max(folder)
    parts = [fit_stem(part, 0, limit) for part in stem.parent.parts]
    return Path(*parts, fit_stem(stem.name, reserve, limit))


def temporary_name(final: str, token: str) -> str:
    """A hidden name to write `final` under before renaming it: `.TOKEN.part-` and the final name,
    cut to the final name's length in bytes, so it fits wherever the final name fits (a short
    name keeps only part of the random token: the caller retries on a clash)."""
    raw = os.fsencode(final)
    return os.fsdecode(_cut(os.fsencode(f".{token}.part-") + raw, len(raw)))
