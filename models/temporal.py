"""An optional temporal module after the Q-Former: a small causal Mamba over each query's history.

Video Mamba Suite (arXiv 2403.09626) uses Mamba as a temporal adapter for video at a cost linear
in length. Like MA-LMM's memory bank, a state-space model keeps a fixed-size state and steps one
frame at a time, so it fits reading online and live streams.

After each frame's Q-Former step the query output z [R, NQ, D] (R readers, NQ query tokens) is one
more step of NQ sequences, one per query position: `TemporalMamba` runs a stack of transformers'
`MambaMixer` blocks (pre-norm, residual, as `MambaModel` builds them, without its embeddings) over
each, and adds the result through a gate that starts closed:

    y = z + tanh(a) * mamba(z),  a = 0 at initialisation,

so an untrained module changes nothing: the LLM reads exactly MA-LMM's output.

Two forms of the same computation, both transformers' code (its CUDA kernels when `mamba-ssm` and
`causal-conv1d` are installed, pure PyTorch otherwise):
- `step`: one frame, carrying the recurrent state (per layer a convolution state [R*NQ, E, K] and
  an SSM state [R*NQ, E, S]) in a transformers `DynamicCache` kept in the `MemoryState`; its size
  is fixed after the first frame, however long the video;
- `scan`: a whole clip at once [R, T, NQ, D], for training on the per-frame outputs of a clip.
Tests check that both agree.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaRMSNorm

from models.presets import TEMPORAL_KINDS

# The default module: one layer, no expansion (a state of E x (S + K) = D x 20 floats per query).
DEFAULT_SIZES = {"layers": 1, "state_size": 16, "conv_kernel": 4, "expand": 1}


def temporal_settings(kind: str, width: int, **sizes: int) -> dict[str, Any] | None:
    """The config entry (`config.temporal`) of a temporal module of `kind` on queries of `width`;
    None for "none". sizes: any of DEFAULT_SIZES."""
    if kind not in TEMPORAL_KINDS:
        raise ValueError(f"temporal module must be one of {', '.join(TEMPORAL_KINDS)}, got {kind!r}")
    if kind == "none":
        return None
    unknown = set(sizes) - set(DEFAULT_SIZES)
    if unknown:
        raise ValueError(f"unknown temporal module sizes: {', '.join(sorted(unknown))}")
    return {"kind": kind, "width": width, **DEFAULT_SIZES, **sizes}


class TemporalMamba(nn.Module):
    """A causal, unidirectional Mamba over each query position's sequence of Q-Former outputs."""

    def __init__(self, settings: dict[str, Any]):
        """settings: from `temporal_settings` (kind "mamba", width, layers, state_size, conv_kernel, expand)."""
        super().__init__()
        self.settings = dict(settings)
        self.mamba_config = MambaConfig(
            vocab_size=1,  # no embeddings: the inputs are Q-Former outputs
            hidden_size=settings["width"],
            num_hidden_layers=settings["layers"],
            state_size=settings["state_size"],
            conv_kernel=settings["conv_kernel"],
            expand=settings["expand"],
        )
        layers = range(settings["layers"])
        eps = self.mamba_config.layer_norm_epsilon
        self.norms = nn.ModuleList(MambaRMSNorm(settings["width"], eps=eps) for _ in layers)
        self.mixers = nn.ModuleList(MambaMixer(self.mamba_config, layer_idx=i) for i in layers)
        self.out_norm = MambaRMSNorm(settings["width"], eps=eps)
        self.gate = nn.Parameter(torch.zeros(()))  # a: tanh(0) = 0, the module starts closed
        if self.gate.device.type != "meta":  # transformers builds on meta, then loads or calls _init_weights
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's own initialisation (as `MambaPreTrainedModel._init_weights` does it) and a closed gate."""
        config = self.mamba_config
        for norm in [*self.norms, self.out_norm]:
            nn.init.ones_(norm.weight)
        for mixer in self.mixers:
            for linear in (mixer.in_proj, mixer.x_proj, mixer.dt_proj):
                nn.init.normal_(linear.weight, std=config.initializer_range)
            mixer.init_mamba_weights()  # A_log = log(1..S), D = 1, dt_proj's weight and bias
            nn.init.kaiming_uniform_(mixer.conv1d.weight, a=math.sqrt(5))
            nn.init.zeros_(mixer.conv1d.bias)
            nn.init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
            if config.rescale_prenorm_residual:  # GPT-2's scaling of residual projections by depth
                mixer.out_proj.weight /= math.sqrt(config.num_hidden_layers)
        nn.init.zeros_(self.gate)

    def new_state(self) -> DynamicCache:
        """An empty recurrent state; the first `step` sizes it for its readers."""
        return DynamicCache(config=self.mamba_config)

    def _mamba(self, sequences: torch.Tensor, cache: DynamicCache | None) -> torch.Tensor:
        """mamba(z): [L, T, D] -> [L, T, D], L independent sequences (blocks as in MambaModel)."""
        hidden = sequences
        for norm, mixer in zip(self.norms, self.mixers, strict=True):
            # The cache goes second, by position: `cache_params` before transformers 5.24, `cache` since (a
            # wrong name vanishes into **kwargs), and some versions wrap forward and hide its signature.
            hidden = hidden + mixer(norm(hidden), cache)  # residual in float32 (the memory path)
        return self.out_norm(hidden)

    def _gated(self, z: torch.Tensor, cache: DynamicCache | None) -> torch.Tensor:
        """y = z + tanh(a) * mamba(z) over sequences [L, T, D]."""
        return z + torch.tanh(self.gate) * self._mamba(z, cache)

    def step(self, output: torch.Tensor, state: DynamicCache) -> torch.Tensor:
        """One frame: the Q-Former output [R, NQ, D] -> [R, NQ, D], `state` updated in place."""
        rows, queries, width = output.shape
        sequences = output.reshape(rows * queries, 1, width)  # [R*NQ, 1, D]: one step of each sequence
        return self._gated(sequences, state).view(rows, queries, width)

    def scan(self, outputs: torch.Tensor) -> torch.Tensor:
        """A whole clip at once: Q-Former outputs of every frame [R, T, NQ, D] -> [R, T, NQ, D], each
        frame's value what `step` gives after reading the frames up to it."""
        rows, frames, queries, width = outputs.shape
        sequences = outputs.transpose(1, 2).reshape(rows * queries, frames, width)  # [R*NQ, T, D]
        gated = self._gated(sequences, None)
        return gated.view(rows, queries, frames, width).transpose(1, 2)


def state_tensors(state: DynamicCache | None) -> list[torch.Tensor]:
    """The convolution and SSM states a temporal state holds (none before the first frame)."""
    if state is None:
        return []
    held = []
    for layer in state.layers:
        held += [t for t in (*layer.conv_states.values(), *layer.recurrent_states.values()) if t is not None]
    return held


def select_state(state: DynamicCache | None, rows: torch.Tensor) -> DynamicCache | None:
    """The temporal state of some sequences only (a copy). rows: indices into its first dimension."""
    if state is None:
        return None
    chosen = copy.deepcopy(state)
    chosen.reorder_cache(rows)
    return chosen
