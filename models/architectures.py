"""The shapes of the InstructBLIP family, without downloading anything.

Used to plan memory for a model that is not cached yet and to build full-size random-weight
models for benchmarks. Values are those of the Salesforce InstructBLIP configurations on the
Hugging Face hub (EVA ViT-g/14 with 39 layers at 224 px, a 12-layer Q-Former, 32 query tokens).
"""

from __future__ import annotations

from transformers import (
    InstructBlipConfig,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
    T5Config,
)


def _vision() -> InstructBlipVisionConfig:
    return InstructBlipVisionConfig(
        hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
        image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True,
    )  # fmt: skip


def _qformer() -> InstructBlipQFormerConfig:
    return InstructBlipQFormerConfig(
        vocab_size=30523, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        max_position_embeddings=512, cross_attention_frequency=2, encoder_hidden_size=1408,
    )  # fmt: skip


def _vicuna(hidden: int, intermediate: int, layers: int, heads: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=32002, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048, rms_norm_eps=1e-6,
        bos_token_id=2, eos_token_id=2, pad_token_id=32000,
    )  # fmt: skip


def _flan_t5(d_model: int, d_ff: int, heads: int) -> T5Config:
    return T5Config(
        vocab_size=32128, d_model=d_model, d_kv=64, d_ff=d_ff, num_layers=24, num_decoder_layers=24,
        num_heads=heads, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip


def architecture(name: str) -> InstructBlipConfig:
    """The configuration of a known model: vicuna-7b, vicuna-13b, flan-t5-xl or flan-t5-xxl."""
    text = {
        "vicuna-7b": lambda: _vicuna(4096, 11008, 32, 32),
        "vicuna-13b": lambda: _vicuna(5120, 13824, 40, 40),
        "flan-t5-xl": lambda: _flan_t5(2048, 5120, 32),
        "flan-t5-xxl": lambda: _flan_t5(4096, 10240, 64),
    }
    if name not in text:
        raise ValueError(f"unknown architecture {name!r}: one of {', '.join(text)}")
    return InstructBlipConfig(
        vision_config=_vision().to_dict(),
        qformer_config=_qformer().to_dict(),
        text_config=text[name]().to_dict(),
        num_query_tokens=32,
        image_token_index=32001 if name.startswith("vicuna") else 32100,
        max_num_frames=120,
    )


def reduced_depth(config: InstructBlipConfig, vision_layers: int = 2, llm_layers: int = 2) -> InstructBlipConfig:
    """The same widths (hidden sizes, heads, vocabulary, 257 tokens a frame) with fewer ViT and LLM
    layers; the Q-Former keeps all of its own. For checks and benchmarks at real shapes that fit a
    CPU: vicuna-7b becomes ~0.9 B parameters instead of 8 B."""
    reduced = InstructBlipConfig.from_dict(config.to_dict())
    reduced.vision_config.num_hidden_layers = vision_layers
    text = reduced.text_config
    if text.model_type == "t5":
        text.num_layers = text.num_decoder_layers = llm_layers
    else:
        text.num_hidden_layers = llm_layers
    return reduced
