"""The memory in a training step (models/qformer.py `remember`): the banks keep detached entries
and projections, so that only the clip's last step holds a graph and the memory a clip leaves
behind holds none. (What the gradients are is tests/test_training.py's
test_gradients_are_malmms_training_gradients.)"""

from __future__ import annotations

from pathlib import Path

import torch

from models import Malmm
from models.training import read_clip, trainable_parameters


def test_a_training_step_leaves_no_graph_in_the_memory(tiny_llama_dir: Path) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir)  # its own: trainable_parameters unfreezes it
    trainable_parameters(malmm.model)
    frames = 4  # more than the bank holds: the last step merges entries too
    features = torch.randn(2, frames, 17, 48, generator=torch.Generator().manual_seed(0))
    state = malmm.new_memory(["what happens?", "who is there?"], 2, total_frames=frames)
    output = read_clip(malmm.model, state, features)
    assert output.requires_grad  # the last step was differentiated...
    held = state.tensors()
    assert len(held) > 10 and not [t.shape for t in held if t.requires_grad]  # ...but the banks hold no graph
    state.copy()  # a state holding a graph could not be deep-copied
