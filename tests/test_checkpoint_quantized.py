"""`--checkpoint` on a 4-/8-bit LLM: the trained weights are in effect exactly as on a full-precision
one (they are all outside the LLM, which quantization leaves alone), and LLM weights, which a
quantized LLM cannot take, are refused instead of being cast to garbage.

The tiny model's LLM widths are multiples of 64, so bitsandbytes' packed 4-bit kernel of
AVX512-BF16 CPUs (AMD EPYC, recent Xeons) takes every layer, as does the plain one elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from models import CAPTION, CheckpointError, Malmm, MalmmForConditionalGeneration
from models.checkpoint import TRAINED_PREFIXES, save_trained
from models.presets import TRAINED_WEIGHTS
from tests import media
from tests.tiny_models import IMAGE_SIZE

LAYERS = {"8bit": bnb.nn.Linear8bitLt, "4bit": bnb.nn.Linear4bit}
# Cosine of the quantized LLM's next-token logits to the full-precision ones, both with the
# checkpoint (measured: 0.99997 and 0.996); without it they are ~0.67.
MIN_COSINE = {"8bit": 0.9995, "4bit": 0.99}


@pytest.fixture(scope="module")
def trained_run(tiny_llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `malmm train` run folder whose every trained tensor differs from the base model's."""
    model = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.startswith(TRAINED_PREFIXES):
                parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    run = tmp_path_factory.mktemp("run")
    save_trained(model, run / TRAINED_WEIGHTS, str(tiny_llama_dir))
    return run


def read_and_score(malmm: Malmm) -> tuple[torch.Tensor, torch.Tensor]:
    """The Q-Former's output after 6 frames and the LLM's next-token logits after the caption prompt."""
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    output, _ = malmm.read(pixels, malmm.new_memory(CAPTION.prompt(), 3))
    ids = malmm.tokenizer([CAPTION.prompt()], return_tensors="pt").input_ids
    with torch.inference_mode():
        embeds = torch.cat([malmm.model.language_inputs(output), malmm.model.get_input_embeddings()(ids)], dim=1)
        return output, malmm.model.language_model(inputs_embeds=embeds).logits[0, -1].float()


@pytest.fixture(scope="module")
def full_precision(tiny_llama_dir: Path, trained_run: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return read_and_score(Malmm.from_pretrained(tiny_llama_dir, checkpoint=trained_run))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_trained_weights_are_in_effect_in_a_quantized_model(
    mode: str, tiny_llama_dir: Path, trained_run: Path, full_precision: tuple[torch.Tensor, torch.Tensor]
) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir, checkpoint=trained_run, quantize=mode)
    llm_linears = [m for n, m in malmm.model.language_model.named_modules()
                   if isinstance(m, nn.Linear) and "lm_head" not in n]  # fmt: skip
    assert llm_linears and all(isinstance(m, LAYERS[mode]) for m in llm_linears)  # really quantized
    saved = load_file(str(trained_run / TRAINED_WEIGHTS))
    assert malmm.checkpoint_report.loaded and sorted(malmm.checkpoint_report.loaded) == sorted(saved)
    parameters = dict(malmm.model.named_parameters())
    for name, tensor in saved.items():
        assert torch.equal(parameters[name], tensor), name

    output, logits = read_and_score(malmm)
    torch.testing.assert_close(output, full_precision[0], rtol=0, atol=1e-6)  # the memory path is untouched
    assert cosine(logits, full_precision[1]) > MIN_COSINE[mode]
    untrained_output, untrained_logits = read_and_score(Malmm.from_pretrained(tiny_llama_dir, quantize=mode))
    assert (untrained_output - output).abs().max() > 0.5
    assert cosine(untrained_logits, full_precision[1]) < 0.9


def test_cli_checkpoint_with_a_quantized_llm(
    run, readouts: dict[tuple, torch.Tensor], trained_run: Path, tmp_path: Path
) -> None:
    """`--checkpoint RUN --quantize 4bit|8bit`: the LLM reads what it reads with the checkpoint
    in full precision, not what the base model gives it."""
    clip = media.make_video(tmp_path / "clip.mp4", seconds=2, fps=8)

    def read(*options: str | Path) -> dict[tuple, torch.Tensor]:
        readouts.clear()
        result = run("caption", clip, "--frames", "4", *options)
        assert result.exit_code == 0, result.output
        if "--checkpoint" in options:
            assert f"Loaded {len(load_file(str(trained_run / TRAINED_WEIGHTS)))} tensors" in result.stderr
        if "--quantize" in options:
            assert f"quantize {options[-1]};" in result.stderr
        return dict(readouts)

    expected = read("--checkpoint", trained_run)
    assert expected
    for mode in ("8bit", "4bit"):
        got = read("--checkpoint", trained_run, "--quantize", mode)
        assert got.keys() == expected.keys()
        for key, tokens in got.items():
            torch.testing.assert_close(tokens, expected[key], rtol=0, atol=1e-6)
    base = read("--quantize", "4bit")
    assert all((base[key] - tokens).abs().max() > 0.5 for key, tokens in expected.items())


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_llm_weights_are_refused_by_a_quantized_llm(mode: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    """A LAVIS checkpoint that holds LLM weights (a recipe that trained the LLM) loads into a
    full-precision LLM; a 4-/8-bit one would have cast them to integers (8-bit: all zeros)."""
    base = MalmmForConditionalGeneration.from_pretrained(tiny_llama_dir).state_dict()
    state = {f"llm_model.{name.removeprefix('language_model.')}": value + 0.01
             for name, value in base.items() if name.startswith("language_model.model.layers.0.")}  # fmt: skip
    state["query_tokens"] = base["query_tokens"] + 0.5
    path = tmp_path / "checkpoint_best.pth"
    torch.save({"model": state}, path)

    loaded = Malmm.from_pretrained(tiny_llama_dir, checkpoint=path).model.state_dict()
    name = "language_model.model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(loaded[name], base[name] + 0.01, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"holds LLM weights \(language_model\.model\.layers\.0\..*cannot be "
                       r"loaded into a 4-/8-bit LLM: load the model without quantization"):  # fmt: skip
        Malmm.from_pretrained(tiny_llama_dir, checkpoint=path, quantize=mode)
