"""What changed in transformers' public API within the versions malmm supports (pyproject.toml).

transformers 5.24 renamed the cache argument of models and layers (`past_key_values`, and
`cache_params` for Mamba) to `cache`, keeping the old names as deprecated aliases. A forward with
`**kwargs` takes a name it does not know without complaint and runs without a cache, so passing
the wrong name is not an error but a silent loss of state (MambaMixer then steps each frame as if
it were the first). `cache_argument` reads the name from the signature instead of guessing it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

CACHE_ARGUMENTS = ("cache", "past_key_values", "cache_params")  # newest first


def cache_argument(forward: Callable[..., Any]) -> str:
    """The keyword under which `forward` (a module's forward, or the module) takes its cache."""
    parameters = inspect.signature(forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in parameters:
            return name
    raise TypeError(
        f"{getattr(forward, '__qualname__', forward)!r} takes none of {', '.join(CACHE_ARGUMENTS)}: "
        "this transformers version is not one malmm supports"
    )
