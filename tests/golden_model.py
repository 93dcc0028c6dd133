"""Build a MalmmForConditionalGeneration shaped like the golden fixture's tiny reference model."""

from __future__ import annotations

from transformers import InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig, LlamaConfig

from models.modeling import MalmmForConditionalGeneration


def golden_model(config: dict) -> MalmmForConditionalGeneration:
    """The fixture stores Q-Former, ln_vision, llm_proj and image_pe; ViT and LLM are only shapes."""
    vision = InstructBlipVisionConfig(
        hidden_size=config["vision_hidden_size"],
        intermediate_size=2 * config["vision_hidden_size"],
        num_hidden_layers=1,
        num_attention_heads=1,  # one head fits any width the fixture may have
        image_size=32,
        patch_size=8,
        layer_norm_eps=config["ln_vision_eps"],
    )
    qformer = InstructBlipQFormerConfig(
        vocab_size=config["qformer_vocab_size"],
        hidden_size=config["qformer_hidden_size"],
        num_hidden_layers=config["qformer_num_hidden_layers"],
        num_attention_heads=config["qformer_num_attention_heads"],
        intermediate_size=config["qformer_intermediate_size"],
        max_position_embeddings=config["qformer_max_position_embeddings"],
        cross_attention_frequency=config["qformer_cross_attention_frequency"],
        layer_norm_eps=config["qformer_layer_norm_eps"],
        encoder_hidden_size=config["vision_hidden_size"],
    )
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=config["llm_hidden_size"],
        intermediate_size=2 * config["llm_hidden_size"],
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
    )
    full = InstructBlipConfig(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=config["num_query_tokens"],
        max_num_frames=config["max_num_frames"],
    )
    return MalmmForConditionalGeneration(full).eval()
