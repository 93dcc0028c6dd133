"""MA-LMM on transformers' InstructBLIP: a bounded, compressed memory bank read frame by frame.

Start at `Malmm` (malmm.py) for the Python API; `MalmmForConditionalGeneration` (modeling.py) is
the network, `MemoryState` (memory.py) what it remembers about one video, presets.py MA-LMM's
settings. Names are imported on first use, so `import models` (and the CLI's --help) stays fast
until torch is actually needed.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CAPTION": "models.presets",
    "CLASSIFICATION": "models.presets",
    "DEFAULT_MODEL": "models.presets",
    "QUESTION": "models.presets",
    "GenerationSettings": "models.presets",
    "Task": "models.presets",
    "CheckpointError": "models.checkpoint",
    "CheckpointReport": "models.checkpoint",
    "load_lavis_checkpoint": "models.checkpoint",
    "Malmm": "models.malmm",
    "MalmmForConditionalGeneration": "models.modeling",
    "frame_position": "models.modeling",
    "MemoryBank": "models.memory",
    "MemoryState": "models.memory",
    "TemporalMamba": "models.temporal",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
