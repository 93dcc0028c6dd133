"""Tiny random-weight InstructBLIP/MA-LMM folders in Hugging Face format, built offline.

A folder holds what a hub repo such as Salesforce/instructblip-vicuna-7b holds: config and
safetensors weights, the LLM tokenizer, the Q-Former tokenizer in `qformer_tokenizer/` and the
image processor configuration, so loading code is exercised exactly as with real weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertTokenizerFast,
    BlipImageProcessorPil,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    PreTrainedTokenizerFast,
    T5Config,
)

WORDS = [
    "?",
    ".",
    ",",
    "a",
    "the",
    "man",
    "woman",
    "dog",
    "cat",
    "is",
    "are",
    "was",
    "playing",
    "running",
    "cooking",
    "eating",
    "walking",
    "talking",
    "on",
    "in",
    "at",
    "with",
    "and",
    "of",
    "to",
    "video",
    "shows",
    "describe",
    "what",
    "does",
    "happen",
    "person",
    "people",
    "car",
    "street",
    "kitchen",
    "food",
    "ball",
    "game",
    "music",
    "dancing",
    "singing",
    "outside",
    "inside",
    "room",
    "table",
    "chair",
    "water",
    "swimming",
    "riding",
    "bike",
    "horse",
    "child",
    "children",
    "two",
    "three",
    "red",
    "blue",
    "green",
    "big",
    "small",
    "happy",
    "question",
    "short",
    "answer",
    "yes",
    "no",
    "activity",
    "type",
    "breakfast",
    "movie",
    "making",
    "pancakes",
    "salad",
    "coffee",
    "juice",
    "tea",
    "eggs",
    "sandwich",
    "cereal",
    "milk",
]
IMAGE_SIZE = 32  # 4 x 4 patches of 8 pixels + CLS = 17 vision tokens, as in the golden fixture
NUM_QUERY_TOKENS = 8


def _word_tokenizer(specials: list[str], template: str, **tokens: str) -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(specials + list(WORDS))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=tokens["unk_token"]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    special_ids = [(t, vocab[t]) for t in specials if t in template]
    backend.post_processor = processors.TemplateProcessing(single=template, special_tokens=special_ids)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def llama_tokenizer() -> PreTrainedTokenizerFast:
    """Vicuna-like ids: 0 <unk>, 1 <s>, 2 </s>; like the hub InstructBLIP tokenizer, BOS is </s>."""
    specials = ["<unk>", "<s>", "</s>", "[PAD]", "<image>"]
    return _word_tokenizer(
        specials,
        "</s> $A",
        unk_token="<unk>",
        bos_token="</s>",
        eos_token="</s>",
        pad_token="[PAD]",
        extra_special_tokens={"image_token": "<image>"},
    )


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """Flan-T5-like ids: 0 <pad>, 1 </s>, 2 <unk>; no BOS, </s> appended."""
    specials = ["<pad>", "</s>", "<unk>", "<image>"]
    return _word_tokenizer(
        specials,
        "$A </s>",
        unk_token="<unk>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def qformer_tokenizer() -> BertTokenizerFast:
    """A BERT WordPiece tokenizer like InstructBLIP's Q-Former one ([CLS] ... [SEP])."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})


def tiny_config(
    llm: str = "llama", max_num_frames: int = 32, vocab_size: int | None = None, llm_initializer_range: float = 0.02
) -> InstructBlipConfig:
    """llm_initializer_range: the std of the random LLM's weights. Learning tests raise it: with
    transformers' 0.02 a tiny random LLM's logits are nearly uniform whatever it reads, so a soft
    prompt has almost nothing to steer."""
    vision = InstructBlipVisionConfig(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE_SIZE,
        patch_size=8,
        layer_norm_eps=1e-5,
        initializer_range=0.02,  # transformers' default (1e-10) makes every frame look the same
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        cross_attention_frequency=2,
        encoder_hidden_size=48,
    )
    # LLM widths are multiples of 64: bitsandbytes' 4-bit kernel on AVX512-BF16 CPUs needs
    # out_features % 32 == 0 and in_features % 64 == 0 (models/quantization.py).
    if llm == "llama":
        text = LlamaConfig(
            vocab_size=vocab_size or len(WORDS) + 5,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            bos_token_id=2,
            eos_token_id=2,
            pad_token_id=3,
            initializer_range=llm_initializer_range,
        )
    else:
        text = T5Config(
            vocab_size=vocab_size or len(WORDS) + 4,
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
            initializer_factor=llm_initializer_range / 0.02,
        )
    image_token = len(WORDS) + 4 if llm == "llama" else len(WORDS) + 3
    return InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=NUM_QUERY_TOKENS,
        image_token_index=image_token,
        max_num_frames=max_num_frames,
    )


def build_model_folder(
    directory: Path, config: InstructBlipConfig, seed: int = 0, dtype: torch.dtype = torch.float32
) -> Path:
    """Save a random-weight model of any shape with the tiny tokenizers and a matching image processor.

    The weights are InstructBLIP without a frame table, as on the hub, built directly in `dtype`
    (a float16 model of real widths never exists in float32). The tokenizers' ids fit any
    vocabulary at least as large as theirs, so full-size shapes work too.
    """
    torch.manual_seed(seed)
    config.vision_config.initializer_range = 0.02  # transformers' default (1e-10) makes every frame look the same
    model = InstructBlipForConditionalGeneration._from_config(config, dtype=dtype).eval()
    with torch.no_grad():  # the hub weights have non-zero query tokens; random ones exercise more
        model.query_tokens.normal_(std=0.5)
    model.save_pretrained(directory)
    llm = config.text_config.model_type
    (llama_tokenizer() if llm == "llama" else t5_tokenizer()).save_pretrained(directory)
    qformer_tokenizer().save_pretrained(directory / "qformer_tokenizer")
    size = config.vision_config.image_size
    BlipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(directory)
    return directory


def build_tiny_model(directory: Path, llm: str = "llama", seed: int = 0) -> Path:
    """Save a tiny random-weight InstructBLIP (no frame table, as on the hub) with tokenizers to `directory`."""
    return build_model_folder(directory, tiny_config(llm), seed)
