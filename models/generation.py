"""Text from the memory output: beam-search generation and closed-set label scoring.

The LLM sees the last step's query tokens (projected to its width) placed before the prompt, as
MA-LMM and InstructBLIP do. Works for decoder-only LLMs (Vicuna) and encoder-decoder ones (Flan-T5).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import torch
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.generation.streamers import BaseStreamer
from transformers.modeling_outputs import BaseModelOutput

from models.compat import cache_keyword
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
    # pads sit between queries and prompt, masked out (as MA-LMM); asked per call: the tokenizer is shared
    tokens = tokenizer(prompts, padding="longest", padding_side="left", return_tensors="pt").to(device)
    queries = model.language_inputs(query_output).to(device, embed.weight.dtype)
    embeds = torch.cat([queries, embed(tokens.input_ids)], dim=1)
    query_mask = torch.ones(queries.shape[:2], dtype=tokens.attention_mask.dtype, device=device)
    mask = torch.cat([query_mask, tokens.attention_mask], dim=1)
    return embeds, mask


def _is_vicuna_vocabulary(model: MalmmForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> bool:
    """LLaMA/Vicuna vocabularies: 0 = <unk>, 1 = <s>, 2 = </s>."""
    return model.config.use_decoder_only_language_model and tokenizer.eos_token_id == 2


def _decoded(model: MalmmForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, ids: torch.Tensor) -> list[str]:
    """Answers [B, T] of new token ids as text, stripped."""
    if _is_vicuna_vocabulary(model, tokenizer):
        ids = ids.clamp(min=2)  # MA-LMM's quirk: <unk>/<s> (and -1) become </s>, then skipped
    return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class TextSoFar(BaseStreamer):
    """Each video's answer as it grows, while greedy decoding runs: transformers hands `put` the
    prompt's ids first (skipped), then each step's new tokens ([B], or [B, k] for k steps); every
    step, told(row, text) gets that row's answer so far, decoded as the finished one will be."""

    def __init__(self, model: MalmmForConditionalGeneration, tokenizer: PreTrainedTokenizerBase, rows: int,
                 told: Callable[[int, str], None]):  # fmt: skip
        self.model, self.tokenizer, self.told = model, tokenizer, told
        self.ids = torch.empty(rows, 0, dtype=torch.long)  # [B, T so far]
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.ids = torch.cat([self.ids, value.reshape(self.ids.shape[0], -1).to(torch.long)], dim=1)
        for row, text in enumerate(_decoded(self.model, self.tokenizer, self.ids)):
            self.told(row, text)

    def end(self) -> None:
        pass


@torch.inference_mode()
def generate_ids(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    settings: GenerationSettings = GenerationSettings(),
    streamer: BaseStreamer | None = None,
) -> torch.Tensor:
    """New token ids [B x R, T] from beam search over [queries ; prompt], the R =
    `settings.beams_returned` best beams of each video in a row, best first. query_output: [B, NQ, D].
    streamer: given each step's tokens (greedy decoding only: num_beams 1)."""
    embeds, mask = _prefix(model, tokenizer, query_output, prompts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    streaming = {} if streamer is None else {"streamer": streamer}
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
            num_return_sequences=settings.beams_returned,
            pad_token_id=pad,
            **streaming,
        )


def generate(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    settings: GenerationSettings = GenerationSettings(),
) -> list[str]:
    """One answer per video, decoded and stripped (the best beam)."""
    return [beams[0] for beams in generate_beams(model, tokenizer, query_output, prompts, settings)]


def generate_beams(
    model: MalmmForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    query_output: torch.Tensor,
    prompts: list[str],
    settings: GenerationSettings = GenerationSettings(),
    on_text: Callable[[int, str], None] | None = None,
) -> list[list[str]]:
    """The `settings.beams_returned` best answers per video, best first, decoded and stripped.
    on_text(video, text so far): each video's answer as it is generated, when decoding is greedy
    (one beam; beam search knows no token for sure until it ends, so it is not told)."""
    greedy = settings.num_beams == 1 and settings.beams_returned == 1
    streamer = TextSoFar(model, tokenizer, len(prompts), on_text) if on_text is not None and greedy else None
    texts = _decoded(model, tokenizer, generate_ids(model, tokenizer, query_output, prompts, settings, streamer))
    per_video = settings.beams_returned
    return [texts[i : i + per_video] for i in range(0, len(texts), per_video)]


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

    Higher is more likely. The shared prefix ([queries ; prompt]) is run through the LLM once
    per call (its key/value cache, or the encoder's output for T5, is reused); labels are then
    scored in chunks of `labels_per_batch` to bound memory (COIN has 180 labels).
    """
    if not labels:
        raise ValueError("no labels to score")
    decoder_only = model.config.use_decoder_only_language_model
    label_ids = [_label_ids(tokenizer, label, decoder_only) for label in labels]
    embeds, mask = _prefix(model, tokenizer, query_output, prompts)  # [B, P, H]
    prefix = _DecoderPrefix(model, embeds, mask) if decoder_only else _EncoderPrefix(model, embeds, mask)
    scores = torch.empty(len(prompts), len(labels), dtype=torch.float32)
    pad_id = (tokenizer.pad_token_id if decoder_only else model.language_model.config.pad_token_id) or 0
    for start in range(0, len(labels), labels_per_batch):
        chunk = label_ids[start : start + labels_per_batch]
        ids, real = right_padded(chunk, pad_id, embeds.device)  # [K, L]
        logits = prefix.label_logits(ids, real)  # [B*K, L, V]
        batch = len(prompts)
        chunk_scores = _sum_log_probs(logits, ids.repeat(batch, 1), real.repeat(batch, 1)).view(batch, len(chunk))
        scores[:, start : start + len(chunk)] = chunk_scores.cpu()
    return scores


def right_padded(chunk: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids [K, Lmax] and a mask [K, Lmax] of real tokens."""
    longest = max(len(ids) for ids in chunk)
    ids = torch.full((len(chunk), longest), pad_id, dtype=torch.long, device=device)
    real = torch.zeros(len(chunk), longest, dtype=torch.bool, device=device)
    for row, label in enumerate(chunk):
        ids[row, : len(label)] = torch.tensor(label, device=device)
        real[row, : len(label)] = True
    return ids, real


class _DecoderPrefix:
    """A decoder-only LLM after reading [queries ; prompt] once: each sequence is [prefix ; label],
    label token i predicted by the state before it (the prefix's last state for i = 0)."""

    def __init__(self, model: MalmmForConditionalGeneration, prefix: torch.Tensor, prefix_mask: torch.Tensor):
        self.language_model = model.language_model
        self.embed = model.get_input_embeddings()
        self.mask = prefix_mask
        positions = (prefix_mask.cumsum(dim=1) - 1).clamp(min=0)  # padding takes no position, as in generate
        decoder = self.language_model.get_decoder()
        # The cache is ours, filled in place: its name in the call and in the output changed in 5.24
        self.cache_keyword = cache_keyword()
        self.cache = DynamicCache(config=decoder.config)
        out = decoder(
            inputs_embeds=prefix, attention_mask=prefix_mask, position_ids=positions, use_cache=True,
            **{self.cache_keyword: self.cache},
        )  # fmt: skip
        self.last = out.last_hidden_state[:, -1:]  # [B, 1, H]: predicts the first label token

    def label_logits(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """[B*K, L, V] for the K labels `ids` [K, L] after every prefix (rows b*K + k)."""
        batch, count = self.mask.shape[0], ids.shape[0]
        cache = copy.deepcopy(self.cache)  # the next call extends it: each chunk starts from the prefix
        cache.batch_repeat_interleave(count)
        mask = torch.cat([self.mask.repeat_interleave(count, 0), real.repeat(batch, 1).long()], dim=1)
        start = self.mask.sum(dim=1).repeat_interleave(count, 0)[:, None]  # real prefix tokens
        positions = start + torch.arange(ids.shape[1], device=ids.device)
        hidden = self.language_model.get_decoder()(
            inputs_embeds=self.embed(ids).repeat(batch, 1, 1), attention_mask=mask, position_ids=positions,
            use_cache=True, **{self.cache_keyword: cache},
        ).last_hidden_state  # fmt: skip
        predicting = torch.cat([self.last.repeat_interleave(count, 0), hidden[:, :-1]], dim=1)  # [B*K, L, H]
        return self.language_model.get_output_embeddings()(predicting).float()


class _EncoderPrefix:
    """A T5-style LLM after encoding [queries ; prompt] once: the label is the decoder's target."""

    def __init__(self, model: MalmmForConditionalGeneration, prefix: torch.Tensor, prefix_mask: torch.Tensor):
        self.language_model = model.language_model
        self.mask = prefix_mask
        self.encoded = self.language_model.get_encoder()(inputs_embeds=prefix, attention_mask=prefix_mask)

    def label_logits(self, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        batch, count = self.mask.shape[0], ids.shape[0]
        encoded = BaseModelOutput(last_hidden_state=self.encoded.last_hidden_state.repeat_interleave(count, 0))
        return self.language_model(
            encoder_outputs=encoded,
            attention_mask=self.mask.repeat_interleave(count, 0),
            labels=ids.masked_fill(~real, -100).repeat(batch, 1),
        ).logits.float()


def _sum_log_probs(logits: torch.Tensor, ids: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Sum over real positions of log p(ids). logits [R, L, V], ids/real [R, L] -> [R]."""
    picked = torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return (picked * real).sum(dim=1)
