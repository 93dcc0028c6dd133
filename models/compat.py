"""What changed in transformers' public API within the versions malmm supports (pyproject.toml).

transformers 5.24 renamed the cache argument and output field of every model (`past_key_values`,
`cache_params` for Mamba) to `cache`, keeping the old names as deprecated aliases until 5.40. A
forward with `**kwargs` takes a name it does not know without complaint and runs without a cache,
so the wrong name is not an error but a silent loss of state. The rename was library-wide, so the
fields of the public `BaseModelOutputWithPast` tell which name this version uses; a model's own
signature cannot always tell (some versions wrap forward in decorators that hide it).
"""

from __future__ import annotations

import dataclasses

from transformers.modeling_outputs import BaseModelOutputWithPast


def cache_keyword() -> str:
    """The keyword under which this transformers version's models take (and return) their cache."""
    fields = {field.name for field in dataclasses.fields(BaseModelOutputWithPast)}
    for name in ("cache", "past_key_values"):  # newest first
        if name in fields:
            return name
    raise ImportError(
        "transformers' BaseModelOutputWithPast has neither `cache` nor `past_key_values`: "
        "this transformers version is not one malmm supports (see pyproject.toml)"
    )
