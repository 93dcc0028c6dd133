"""4-/8-bit loading on CPU: the LLM's linear layers are really replaced, everything else untouched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from models import CAPTION, GenerationSettings, Malmm
from models.architectures import architecture
from models.memory_plan import GIB, choose_quantization, plan_memory
from models.quantization import cpu_4bit_packs_weights, fits_packed_4bit, quantization_config, quantize_vision_8bit
from tests.tiny_models import IMAGE_SIZE, build_model_folder, tiny_config

QUANTIZED_TYPES = {"8bit": (bnb.nn.Linear8bitLt, torch.int8), "4bit": (bnb.nn.Linear4bit, torch.uint8)}
FULL_PRECISION = ("vision_model", "qformer", "language_projection", "language_model.lm_head")


def next_token_logits(malmm: Malmm) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Former output after 6 frames and the LLM's next-token logits after the caption prompt."""
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    output, _ = malmm.read(pixels, malmm.new_memory(CAPTION.prompt(), 3))
    ids = malmm.tokenizer([CAPTION.prompt()], return_tensors="pt").input_ids
    with torch.inference_mode():
        embeds = torch.cat([malmm.model.language_inputs(output), malmm.model.get_input_embeddings()(ids)], dim=1)
        return output, malmm.model.language_model(inputs_embeds=embeds).logits[0, -1].float()


@pytest.fixture(scope="module")
def reference(tiny_llama_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return next_token_logits(Malmm.from_pretrained(tiny_llama_dir))


@pytest.mark.parametrize(("mode", "min_cosine"), [("8bit", 0.9995), ("4bit", 0.99)])
def test_llm_linears_are_quantized_and_outputs_stay_close(tiny_llama_dir, reference, mode, min_cosine) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir, quantize=mode)
    layer_type, weight_dtype = QUANTIZED_TYPES[mode]
    llm_linears = [
        (name, module)
        for name, module in malmm.model.named_modules()
        if name.startswith("language_model.") and "lm_head" not in name and isinstance(module, nn.Linear)
    ]
    assert llm_linears and all(isinstance(m, layer_type) for _, m in llm_linears)
    assert all(m.weight.dtype == weight_dtype for _, m in llm_linears)
    for name, module in malmm.model.named_modules():
        if name.startswith(FULL_PRECISION) and isinstance(module, nn.Linear):
            assert type(module) is nn.Linear and module.weight.dtype == torch.float32, name

    output, logits = next_token_logits(malmm)
    torch.testing.assert_close(output, reference[0], atol=1e-6, rtol=0)  # Q-Former untouched
    cosine = torch.nn.functional.cosine_similarity(logits, reference[1], dim=0).item()
    assert cosine > min_cosine, f"{mode}: next-token logits cosine to fp32 {cosine:.5f}"
    text = malmm.generate(output, CAPTION.prompt(), GenerationSettings(max_new_tokens=6, num_beams=2))
    assert text[0]


def test_vision_encoder_can_be_8bit_too(tiny_llama_dir, reference) -> None:
    malmm = Malmm.from_pretrained(tiny_llama_dir, quantize="4bit", quantize_vision=True)
    vision_linears = [m for m in malmm.model.vision_model.modules() if isinstance(m, nn.Linear)]
    assert vision_linears and all(isinstance(m, bnb.nn.Linear8bitLt) for m in vision_linears)
    assert all(m.weight.dtype == torch.int8 for m in vision_linears)
    assert all(type(m) is nn.Linear for m in malmm.model.qformer.modules() if isinstance(m, nn.Linear))
    output, _ = next_token_logits(malmm)
    torch.testing.assert_close(output, reference[0], atol=1e-3, rtol=0)


class RandomDraws(TorchFunctionMode):
    """Counts the values drawn at random into real (not `meta`) tensors while it is active."""

    # torch.nn.init's functions and the tensor methods they end in; a nested call is not seen
    # again, so each value drawn counts once
    DRAWS = frozenset({"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                       "xavier_uniform_", "xavier_normal_", "orthogonal_", "random_", "bernoulli_"})  # fmt: skip

    def __init__(self) -> None:
        super().__init__()
        self.values = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__name__", "") in self.DRAWS:
            tensor = next(a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor))
            if tensor.device.type != "meta":
                self.values += tensor.numel()
        return func(*args, **kwargs)


def test_the_8bit_vision_load_draws_no_weights_it_throws_away(tiny_llama_dir: Path) -> None:
    """Each 8-bit ViT layer gets the loaded weight: a layer made on the CPU first would draw a
    random weight of its full size and throw it away (about 1 G values for ViT-g, serially)."""
    malmm = Malmm.from_pretrained(tiny_llama_dir)
    vision = malmm.model.vision_model
    before = {name: m.weight.detach().clone() for name, m in vision.named_modules() if type(m) is nn.Linear}
    draws = RandomDraws()
    with draws:
        replaced = quantize_vision_8bit(malmm.model)
    assert replaced == len(before) == 8
    assert draws.values == 0, f"{draws.values} values drawn at random and thrown away"
    for name, module in vision.named_modules():  # still the loaded weights, now in 8 bits
        if name in before:
            assert isinstance(module, bnb.nn.Linear8bitLt) and module.weight.dtype == torch.int8
            dequantized = module.weight.float() * module.weight.SCB[:, None] / 127
            torch.testing.assert_close(dequantized, before[name], atol=before[name].abs().max().item() / 100, rtol=0)


def test_skip_list_names_lm_head_because_it_replaces_the_default() -> None:
    for mode in ("8bit", "4bit"):
        config = quantization_config(mode, torch.float16)
        assert "lm_head" in config.llm_int8_skip_modules
    assert quantization_config("none", torch.float16) is None
    with pytest.raises(ValueError, match="unknown quantization"):
        quantization_config("2bit", torch.float16)


def test_memory_plan_for_vicuna_7b_shapes() -> None:
    config = architecture("vicuna-7b")
    plans = {mode: plan_memory(config, quantize=mode) for mode in ("none", "8bit", "4bit")}
    assert plans["none"].total > plans["8bit"].total > plans["4bit"].total
    assert 12 * GIB < plans["none"].llm < 14 * GIB  # 6.7B params in fp16
    assert plans["4bit"].llm < plans["none"].llm / 3
    assert plan_memory(config, quantize="4bit", quantize_vision=True).vision < plans["4bit"].vision * 0.6
    assert choose_quantization(plans, 24 * GIB) == "none"
    assert choose_quantization(plans, 13 * GIB) == "8bit"
    assert choose_quantization(plans, int(9.5 * GIB)) == "4bit"
    assert choose_quantization(plans, 2 * GIB) is None
    # memory does not depend on how many frames are read: there is no frames argument at all
    assert plan_memory(config, memory_bank_length=40).total > plan_memory(config, memory_bank_length=10).total


def test_the_packed_4bit_cpu_kernel_rule() -> None:
    """bitsandbytes' 4-bit kernel on AVX512-BF16 CPUs takes out_features % 32 == 0 and in_features % 64 == 0;
    elsewhere (other CPUs) every shape works. The rule is checked against the kernel where it runs."""
    assert fits_packed_4bit(nn.Linear(64, 32)) and fits_packed_4bit(nn.Linear(4096, 11008))
    assert not fits_packed_4bit(nn.Linear(40, 80)) and not fits_packed_4bit(nn.Linear(96, 64))
    for in_features, out_features in ((64, 32), (128, 96), (40, 80), (96, 64)):
        layer = bnb.nn.Linear4bit(in_features, out_features, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(torch.randn(out_features, in_features), requires_grad=False, quant_type="nf4")
        layer = layer.to("cpu").eval()
        with torch.inference_mode():
            fits = fits_packed_4bit(nn.Linear(in_features, out_features))
            if fits or not cpu_4bit_packs_weights():
                assert layer(torch.randn(3, in_features)).shape == (3, out_features)
            else:
                with pytest.raises((AssertionError, RuntimeError)):
                    layer(torch.randn(3, in_features))


def test_layers_the_cpu_4bit_kernel_cannot_take_stay_full_precision(tmp_path: Path, monkeypatch) -> None:
    """An LLM 40 wide used to end in "RuntimeError: shape '[32, 0]' is invalid" on AVX512-BF16 CPUs."""
    config = tiny_config()
    config.text_config.hidden_size, config.text_config.intermediate_size = 40, 80
    folder = build_model_folder(tmp_path / "odd", config)
    monkeypatch.setattr("models.malmm.cpu_4bit_packs_weights", lambda: True)  # as on such a CPU, wherever this runs
    malmm = Malmm.from_pretrained(folder, quantize="4bit")
    linears = [m for n, m in malmm.model.language_model.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(m) is nn.Linear for m in linears)  # every layer is 40 or 80 wide: none fits
    assert len(malmm.notes) == 1 and "kept in full precision" in malmm.notes[0]
    output, logits = next_token_logits(malmm)
    full = Malmm.from_pretrained(folder)  # asked for no quantization
    full_output, full_logits = next_token_logits(full)
    torch.testing.assert_close(logits, full_logits, atol=1e-5, rtol=0)  # kept layers compute as full precision
    settings = GenerationSettings(max_new_tokens=3, num_beams=1)
    text = malmm.generate(output, CAPTION.prompt(), settings)
    assert text == full.generate(full_output, CAPTION.prompt(), settings) and text[0]


def test_no_kernels_community_line_on_stderr(tiny_llama_dir: Path) -> None:
    command = [
        sys.executable,
        "-c",
        f"from models import Malmm; Malmm.from_pretrained({str(tiny_llama_dir)!r}, quantize='4bit')",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "kernels-community" not in done.stderr and "gemm_4bit_forward" not in done.stderr


def test_questions_share_the_visual_bank_in_the_memory_plan() -> None:
    from models.memory_plan import memory_state_bytes

    config = architecture("vicuna-7b")
    one, ten = memory_state_bytes(config, 10, readers=1), memory_state_bytes(config, 10, readers=10)
    visual = memory_state_bytes(config, 10, readers=0)  # the visual bank alone
    assert ten - one == 9 * (one - visual) and visual > (one - visual)  # ten query banks, one visual bank
    plans = [plan_memory(config, memory_bank_length=10, readers=readers).total for readers in (1, 10)]
    delta = plans[1] - plans[0]
    assert delta == pytest.approx(9 * (one - visual) * 1.10, rel=1e-6)  # the plan's safety margin included


def test_reading_sizes_fit_what_is_free(tiny_malmm) -> None:
    from malmm_cli.jobs.loading import MAX_VIDEO_BATCH, reading_sizes

    common = {"memory_bank_length": 40, "readers": 1, "num_beams": 5, "max_new_tokens": 50}
    roomy = reading_sizes(tiny_malmm, **common, free=64 * GIB)
    assert roomy.videos == MAX_VIDEO_BATCH and roomy.answers > 1
    tight = reading_sizes(tiny_malmm, **common, free=1)
    assert tight.videos == 1 and tight.answers == 1  # never less than one of each
    assert reading_sizes(tiny_malmm, **common, videos=3, free=1).videos == 3  # as asked


def test_importing_the_quantization_module_leaves_logging_alone() -> None:
    """It installed bitsandbytes' log filters when imported (hidden state, issue 26); now loading
    a quantized model does (test_no_kernels_community_line_on_stderr)."""
    code = (
        "import logging, models.quantization as q\n"
        "names = ('bitsandbytes.backends.cpu.ops', 'bitsandbytes.autograd._functions')\n"
        "print(sum(len(logging.getLogger(n).filters) for n in names))\n"
        "q.quiet_bitsandbytes(); q.quiet_bitsandbytes()\n"
        "print(sum(len(logging.getLogger(n).filters) for n in names))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.split() == ["0", "2"]
