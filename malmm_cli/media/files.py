"""Whether a path is a file a video can be read from, said in words before any decoder loads."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from malmm_cli.media.plans import VideoError


def read_head(path: Path, size: int = 64) -> bytes:
    """First bytes of a regular, non-empty, readable file; VideoError saying which it is not."""
    try:
        status = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise VideoError(f"a broken link: {os.readlink(path)} is not there") from None
        raise VideoError("no such file") from None
    except PermissionError:
        raise VideoError("permission denied") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise VideoError("a symbolic link that points back to itself") from None
        raise VideoError(f"cannot read the file ({error.strerror or error})") from None
    if stat.S_ISDIR(status.st_mode):
        raise VideoError("a directory, not a file")
    if not stat.S_ISREG(status.st_mode):
        raise VideoError("not a regular file (a pipe or device?)")
    if status.st_size == 0:
        raise VideoError("empty file (0 bytes)")
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except PermissionError:
        raise VideoError("permission denied") from None
    except OSError as error:
        raise VideoError(f"cannot read the file ({error.strerror or error})") from None
