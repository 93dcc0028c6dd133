"""The real widths end to end: instructblip-vicuna-7b's and flan-t5-xl's shapes (ViT 1408 wide, 257
tokens a frame; the whole 12-layer Q-Former, 32 queries; LLaMA 4096 wide with its 32,000-word
vocabulary, T5 2048 wide) with one ViT and one LLM layer, random weights, through `malmm caption`
on the CPU in float32, 8-bit and 4-bit. Tiny models cannot show a shape that only real widths
have (bitsandbytes' packed 4-bit kernel, 257-token banks, a 4096-wide projection)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import CAPTION, Malmm
from models.architectures import architecture, reduced_depth
from tests import media
from tests.tiny_models import build_model_folder


@pytest.fixture(scope="module")
def wide_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("full-width")
    return {
        name: build_model_folder(folder / name, reduced_depth(architecture(name), 1, 1), dtype=torch.float16)
        for name in ("vicuna-7b", "flan-t5-xl")
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return media.make_video(tmp_path_factory.mktemp("full-width-clip") / "clip.mp4", seconds=4, fps=10, size=(320, 240))


def test_shapes_at_full_width(wide_models) -> None:
    malmm = Malmm.from_pretrained(wide_models["vicuna-7b"])
    features = malmm.encode_frames(torch.randn(2, 3, 224, 224))
    assert features.shape == (2, 257, 1408) and features.dtype == torch.float32
    state = malmm.new_memory(CAPTION.prompt(), 2, total_frames=3)
    for frame in (features[0], features[1], features[0]):
        output, state = malmm.step(state, frame.unsqueeze(0))
    assert output.shape == (1, 32, 768)
    assert state.visual.slots.shape == (1, 3, 257, 1408) and len(state.queries) == 12
    assert malmm.model.language_inputs(output).shape == (1, 32, 4096)


@pytest.mark.parametrize(
    ("model", "quantize"), [("vicuna-7b", "none"), ("vicuna-7b", "8bit"), ("vicuna-7b", "4bit"), ("flan-t5-xl", "none")]
)
def test_caption_at_full_width(run, wide_models, clip, model: str, quantize: str) -> None:
    result = run(
        "caption", clip, "--model", wide_models[model], "--quantize", quantize, "--frames", "4",
        "--format", "json", "--no-cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["frames"] == 4 and isinstance(data["caption"], str)
    assert f"quantize {quantize}" in result.stderr
