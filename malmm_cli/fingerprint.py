"""Identities that say whether two inputs would give the same features or results.

- `content_hash`: SHA-256 of a whole file, so any change to its bytes changes it, and a copy
  elsewhere keeps it. Hashing runs at about 1 GB/s; the result is remembered in a memo folder
  under the file's inode, size, modification and change times, so the next run reads nothing.
  The change time (ctime) cannot be set back by `touch` or `utime`, so an in-place rewrite that
  keeps size and modification time is still seen.
- `weights_checksum`: exact integer sums over the bits of every tensor of a module, computed
  where the tensors live (no copy off the GPU). Integer sums do not depend on the order of
  additions, so the same weights give the same value on every run and device.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

import torch
from torch import nn

MEMO_PREFIX = ".content-"  # memo files: .content-<40 hex digits>, one per file hashed
MEMO_NAME = re.compile(r"^\.content-[0-9a-f]{40}$")
_WORDS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int32}  # element size -> word type


def _memo_name(path: Path) -> str:
    status = path.stat()
    key = f"{status.st_dev}:{status.st_ino}:{status.st_size}:{status.st_mtime_ns}:{status.st_ctime_ns}"
    return MEMO_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:40]


def content_hash(path: Path, memo_folder: Path | None = None) -> str:
    """SHA-256 (hex) of the file's bytes; remembered in `memo_folder` when given.

    Raises OSError if the file cannot be read; a memo that cannot be read or written is ignored.
    """
    path = Path(path)
    memo = memo_folder / _memo_name(path) if memo_folder is not None else None
    if memo is not None:
        try:
            return json.loads(memo.read_text())["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if memo is not None:
        try:
            descriptor, temporary = tempfile.mkstemp(dir=memo.parent, prefix=memo.name, suffix=".tmp")
            with os.fdopen(descriptor, "w") as handle:
                json.dump({"sha256": digest, "file": str(path)}, handle)
            os.replace(temporary, memo)
        except OSError:
            pass
    return digest


def tensor_checksum(tensor: torch.Tensor) -> tuple[int, int]:
    """Two exact sums of a tensor's bits read as integers: over all words, and over every other one
    (so that moving values around changes it too). Runs on the tensor's device."""
    flat = tensor.detach().contiguous().view(-1)
    words = flat.view(_WORDS[flat.element_size()])
    return int(words.sum(dtype=torch.int64)), int(words[::2].sum(dtype=torch.int64))


def weights_checksum(module: nn.Module) -> str:
    """A hex digest of every parameter and buffer of `module`: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}:{tensor_checksum(tensor)};".encode())
    return digest.hexdigest()
