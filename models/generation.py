"""Text from the memory output: beam-search generation and closed-set label scoring.

The LLM sees the last step's query tokens (projected to its width) placed before the prompt, as
MA-LMM and InstructBLIP do. Works for decoder-only LLMs (Vicuna) and encoder-decoder ones (Flan-T5).
"""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedTokenizerBase

from models.modeling import MalmmForConditionalGeneration
from models.presets import GenerationSettings


def _prefix(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLM input embeddings [B, NQ + Lp, H] = [projected queries ; prompt] and their mask."""
    if len(prompts) != query_output.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for a batch of {query_output.shape[0]} videos")
    embed = model.get_input_embeddings()
    device = embed.weight.device
    tokenizer.padding_side = "left"  # pads sit between queries and prompt, masked out (as MA-LMM)
    tokens = tokenizer(prompts, padding="longest", return_tensors="pt").to(device)
    queries = model.language_inputs(query_output).to(device, embed.weight.dtype)
    embeds = torch.cat([queries, embed(tokens.input_ids)], dim=1)
    query_mask = torch.ones(queries.shape[:2], dtype=tokens.attention_mask.dtype, device=device)
    mask = torch.cat([query_mask, tokens.attention_mask], dim=1)
    return embeds, mask


def _is_vicuna_vocabulary(model: MalmmForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> bool:
    """LLaMA/Vicuna vocabularies: 0 = <unk>, 1 = <s>, 2 = </s>."""
    return model.config.use_decoder_only_language_model and tokenizer.eos_token_id == 2


@torch.inference_mode()
def generate_ids(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    settings: GenerationSettings = GenerationSettings(),
) -> torch.Tensor:
    """New token ids [B, T] from beam search over [queries ; prompt]. query_output: [B, NQ, D]."""
    embeds, mask = _prefix(model, tokenizer, query_output, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with warnings.catch_warnings():
        # Only new tokens are penalised for repetition, as in MA-LMM: the prompt is embeddings.
        warnings.filterwarnings("ignore", message="Passing `repetition_penalty` with `inputs_embeds`")
        return model.language_model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            do_sample=False,
            num_beams=settings.num_beams,
            max_new_tokens=settings.max_new_tokens,  # not max_length: that would count the prompt
            min_new_tokens=settings.min_new_tokens,
            repetition_penalty=settings.repetition_penalty,
            length_penalty=settings.length_penalty,
            pad_token_id=pad,
        )


def generate(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    settings: GenerationSettings = GenerationSettings(),
) -> list[str]:
    """One answer per video, decoded and stripped."""
    output = generate_ids(model, tokenizer, query_output, prompts, settings)
    if _is_vicuna_vocabulary(model, tokenizer):
        output = output.clamp(min=2)  # MA-LMM's quirk: <unk>/<s> (and -1) become </s>, then skipped
    return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def _label_ids(tokenizer: PreTrainedTokenizerBase, label: str, is_decoder_only: bool) -> list[int]:
    """Token ids of a label as an answer: its tokens then end-of-sequence."""
    if not label.strip():
        raise ValueError("labels must not be empty")
    if is_decoder_only:
        return [*tokenizer(label, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    return tokenizer(label).input_ids  # T5-style tokenizers append </s> themselves


@torch.inference_mode()
def score_labels(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    labels: list[str],
    labels_per_batch: int = 16,
) -> torch.Tensor:
    """Log-likelihood of each label as the whole answer: [B, K] (sum of token log-probs, eos included).

    Higher is more likely. Labels are scored in chunks of `labels_per_batch` to bound memory.
    """
    if not labels:
        raise ValueError("no labels to score")
    decoder_only = model.config.use_decoder_only_language_model
    label_ids = [_label_ids(tokenizer, label, decoder_only) for label in labels]
    embeds, mask = _prefix(model, tokenizer, query_output, prompts)  # [B, P, H]
    scores = torch.empty(len(prompts), len(labels), dtype=torch.float32)
    for start in range(0, len(labels), labels_per_batch):
        chunk = label_ids[start : start + labels_per_batch]
        if decoder_only:
            chunk_scores = _score_decoder_only(model, embeds, mask, chunk, tokenizer.pad_token_id or 0)
        else:
            chunk_scores = _score_encoder_decoder(model, embeds, mask, chunk)
        scores[:, start : start + len(chunk)] = chunk_scores.float().cpu()
    return scores


def _padded(chunk: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [K, Lmax] and a mask [K, Lmax] of real tokens."""
    longest = max(len(ids) for ids in chunk)
    ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long, device=device)
    real = torch.zeros(len(chunk), longest, dtype=torch.bool, device=device)
    for row, label in enumerate(chunk):
        ids[row, : len(label)] = torch.tensor(label, device=device)
        real[row, : len(label)] = True
    return ids, real


def _score_decoder_only(
    model: MalmmForConditionalGeneration,
    prefix: torch.Tensor,
    prefix_mask: torch.Tensor,
    chunk: list[list[int]],
    pad_id: int,
) -> torch.Tensor:
    """[B, K]: each sequence is [prefix ; label]; label token i is predicted at position P + i - 1."""
    batch, prefix_len, _ = prefix.shape
    labels, real = _padded(chunk, pad_id, prefix.device)  # [K, L]
    count, length = labels.shape
    label_embeds = model.get_input_embeddings()(labels)  # [K, L, H]
    embeds = torch.cat([prefix.repeat_interleave(count, 0), label_embeds.repeat(batch, 1, 1)], dim=1)  # [B*K, P+L, H]
    mask = torch.cat([prefix_mask.repeat_interleave(count, 0), real.repeat(batch, 1).long()], dim=1)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # padding takes no position, as in generate
    language_model = model.language_model
    decoder = language_model.get_decoder()
    hidden = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    predicting = hidden[:, prefix_len - 1 : prefix_len + length - 1]  # states that predict the label
    logits = language_model.get_output_embeddings()(predicting).float()  # [B*K, L, V]
    return _sum_log_probs(logits, labels.repeat(batch, 1), real.repeat(batch, 1)).view(batch, count)


def _score_encoder_decoder(
    model: MalmmForConditionalGeneration,
    prefix: torch.Tensor,
    prefix_mask: torch.Tensor,
    chunk: list[list[int]],
) -> torch.Tensor:
    """[B, K] for T5-style models: the prefix is the encoder input, the label the decoder target."""
    batch = prefix.shape[0]
    language_model = model.language_model
    pad_id = language_model.config.pad_token_id or 0
    labels, real = _padded(chunk, pad_id, prefix.device)
    count = labels.shape[0]
    targets = labels.masked_fill(~real, -100).repeat(batch, 1)
    logits = language_model(
        inputs_embeds=prefix.repeat_interleave(count, 0),
        attention_mask=prefix_mask.repeat_interleave(count, 0),
        labels=targets,
    ).logits.float()
    return _sum_log_probs(logits, labels.repeat(batch, 1), real.repeat(batch, 1)).view(batch, count)


def _sum_log_probs(logits: torch.Tensor, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sum over real positions of log p(ids). logits [R, L, V], ids/real [R, L] -> [R]."""
    picked = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (picked * real).sum(dim=1)
