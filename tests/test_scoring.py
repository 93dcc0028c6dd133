"""Closed-set scoring: each label's log-likelihood, checked against a plain full forward pass."""

from __future__ import annotations

import pytest
import torch

from models import Malmm

LABELS = ["cooking", "a man cooking eggs", "playing ball", "dog"]
PROMPT = "what is the activity in the video ?"


def brute_force(malmm: Malmm, output: torch.Tensor, label: str) -> float:
    """log p(label tokens, eos | queries, prompt) from one unbatched forward pass, no tricks."""
    model, tokenizer = malmm.model, malmm.tokenizer
    queries = model.language_inputs(output)
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    embed = model.get_input_embeddings()
    if model.config.use_decoder_only_language_model:
        label_ids = torch.tensor([[*tokenizer(label, add_special_tokens=False).input_ids, tokenizer.eos_token_id]])
        embeds = torch.cat([queries, embed(prompt_ids), embed(label_ids)], dim=1)
        logits = model.language_model(inputs_embeds=embeds).logits[0]
        start = embeds.shape[1] - label_ids.shape[1]
        log_probs = torch.log_softmax(logits[start - 1 : -1], dim=-1)
    else:
        label_ids = tokenizer(label, return_tensors="pt").input_ids
        embeds = torch.cat([queries, embed(prompt_ids)], dim=1)
        logits = model.language_model(inputs_embeds=embeds, labels=label_ids).logits[0]
        log_probs = torch.log_softmax(logits, dim=-1)
    return log_probs.gather(-1, label_ids[0].unsqueeze(-1)).sum().item()


@pytest.mark.parametrize("fixture", ["tiny_malmm", "tiny_malmm_t5"])
def test_scores_equal_full_forward_log_likelihood(fixture: str, request: pytest.FixtureRequest) -> None:
    malmm = request.getfixturevalue(fixture)
    torch.manual_seed(9)
    output = torch.randn(2, malmm.model.config.num_query_tokens, 64)
    with torch.inference_mode():
        scores = malmm.score_labels(output, PROMPT, LABELS)
        # chunks smaller than the label list give the same numbers
        from models.generation import score_labels

        chunked = score_labels(malmm.model, malmm.tokenizer, output, [PROMPT] * 2, LABELS, labels_per_batch=3)
        assert scores.shape == (2, len(LABELS))
        for row in range(2):
            for k, label in enumerate(LABELS):
                assert scores[row, k].item() == pytest.approx(
                    brute_force(malmm, output[row : row + 1], label), abs=1e-4
                )
    torch.testing.assert_close(chunked, scores, atol=1e-5, rtol=0)
    assert torch.all(scores < 0)


def test_scoring_rejects_empty_input(tiny_malmm: Malmm) -> None:
    output = torch.zeros(1, tiny_malmm.model.config.num_query_tokens, 64)
    with pytest.raises(ValueError, match="no labels"):
        tiny_malmm.score_labels(output, PROMPT, [])
    with pytest.raises(ValueError, match="empty"):
        tiny_malmm.score_labels(output, PROMPT, ["cooking", "  "])


def test_prompts_of_different_lengths_leave_the_shared_tokenizer_as_it_was(tiny_malmm: Malmm) -> None:
    """The prompt is padded on the left (pads between queries and prompt, masked) for this call only:
    setting the shared tokenizer's padding_side changed it for everyone else who tokenizes with it."""
    from models.generation import score_labels

    tokenizer = tiny_malmm.tokenizer
    before = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        torch.manual_seed(3)
        output = torch.randn(2, tiny_malmm.model.config.num_query_tokens, 64)
        prompts = ["dog ?", PROMPT]  # the first is padded
        with torch.inference_mode():
            together = score_labels(tiny_malmm.model, tokenizer, output, prompts, LABELS)
            alone = [score_labels(tiny_malmm.model, tokenizer, output[i : i + 1], prompts[i : i + 1], LABELS)
                     for i in range(2)]  # fmt: skip
        assert tokenizer.padding_side == "right"
        torch.testing.assert_close(together, torch.cat(alone), atol=1e-4, rtol=0)
    finally:
        tokenizer.padding_side = before
