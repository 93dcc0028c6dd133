"""One frame with an empty memory is plain InstructBLIP: same Q-Former output, same generated tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import InstructBlipForConditionalGeneration

from models.generation import generate_ids
from models.presets import GenerationSettings
from tests.tiny_models import IMAGE_SIZE

PROMPT = "what does the video describe ?"


@pytest.mark.parametrize("llm", ["llama", "t5"])
def test_single_frame_matches_instructblip(llm: str, request: pytest.FixtureRequest) -> None:
    malmm = request.getfixturevalue("tiny_malmm" if llm == "llama" else "tiny_malmm_t5")
    model_dir = request.getfixturevalue("tiny_llama_dir" if llm == "llama" else "tiny_t5_dir")
    reference = InstructBlipForConditionalGeneration.from_pretrained(model_dir).eval()
    torch.manual_seed(4)
    pixels = torch.randn(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    qformer_tokens = malmm.qformer_tokenizer([PROMPT], return_tensors="pt")

    state = malmm.new_memory(PROMPT, memory_bank_length=4)
    output, _ = malmm.step(state, malmm.encode_frames(pixels))
    with torch.inference_mode():
        expected = reference.get_image_features(
            pixels, qformer_input_ids=qformer_tokens.input_ids, qformer_attention_mask=qformer_tokens.attention_mask
        ).qformer_outputs.last_hidden_state[:, : reference.config.num_query_tokens]
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)

    # Repetition penalty off: transformers also penalises prompt tokens (it is given input_ids), MA-LMM
    # only new ones (it gives the LLM embeddings); test_repetition_penalty_spares_the_prompt covers that.
    settings = GenerationSettings(max_new_tokens=12, num_beams=3, repetition_penalty=1.0)
    ours = generate_ids(malmm.model, malmm.tokenizer, output, [PROMPT], settings)
    prompt_ids = malmm.tokenizer([PROMPT], return_tensors="pt").input_ids
    image_ids = torch.full((1, reference.config.num_query_tokens), reference.config.image_token_index)
    input_ids = torch.cat([image_ids, prompt_ids], dim=1)
    theirs = reference.generate(
        pixel_values=pixels,
        qformer_input_ids=qformer_tokens.input_ids,
        qformer_attention_mask=qformer_tokens.attention_mask,
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        num_beams=3,
        max_new_tokens=12,
        min_new_tokens=1,
        repetition_penalty=1.0,
        length_penalty=1.0,
        pad_token_id=malmm.tokenizer.pad_token_id,
    )
    if reference.config.use_decoder_only_language_model:
        theirs = theirs[:, input_ids.shape[1] :]  # transformers returns the prompt too
    assert ours.shape[1] > 1
    assert ours.tolist() == theirs.tolist()


def test_repetition_penalty_spares_the_prompt(tiny_malmm) -> None:
    """MA-LMM penalises repeats of generated tokens only, so prompt words stay free to be used."""
    torch.manual_seed(5)
    output = torch.randn(1, tiny_malmm.model.config.num_query_tokens, 64)
    logits_processor_inputs = []

    class Spy(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            logits_processor_inputs.append(input_ids.clone())
            return scores

    from transformers import LogitsProcessorList

    language_model = tiny_malmm.model.language_model
    original = language_model.generate

    def generate_with_spy(**kwargs):
        return original(logits_processor=LogitsProcessorList([Spy()]), **kwargs)

    language_model.generate = generate_with_spy
    try:
        settings = GenerationSettings(max_new_tokens=3, num_beams=1)
        generate_ids(tiny_malmm.model, tiny_malmm.tokenizer, output, [PROMPT], settings)
    finally:
        del language_model.generate
    assert logits_processor_inputs[0].shape[1] == 0  # the first step sees no prompt ids to penalise
