"""MA-LMM on transformers' InstructBLIP: a bounded, compressed memory bank read frame by frame.

Start at `Malmm` (malmm.py) for the Python API; `MalmmForConditionalGeneration` (modeling.py) is
the network, `MemoryState` (memory.py) what it remembers about one video.
"""

from models.checkpoint import CheckpointError, CheckpointReport, load_lavis_checkpoint
from models.generation import GenerationSettings
from models.malmm import DEFAULT_MODEL, Malmm
from models.memory import MemoryBank, MemoryState
from models.modeling import MalmmForConditionalGeneration, frame_position
from models.tasks import CAPTION, CLASSIFICATION, QUESTION, TASKS, Task

__all__ = [
    "CAPTION",
    "CLASSIFICATION",
    "DEFAULT_MODEL",
    "QUESTION",
    "TASKS",
    "CheckpointError",
    "CheckpointReport",
    "GenerationSettings",
    "Malmm",
    "MalmmForConditionalGeneration",
    "MemoryBank",
    "MemoryState",
    "Task",
    "frame_position",
    "load_lavis_checkpoint",
]
