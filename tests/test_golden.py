"""Parity with the reference MA-LMM code (LAVIS) on every case of the golden fixture, to 1e-5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.checkpoint import load_lavis_state_dict
from models.memory import compress_slots
from tests.golden_model import golden_model

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference_model(golden: dict):
    model = golden_model(golden["config"])
    report = load_lavis_state_dict(model, golden["state_dict"], Path("golden"))
    assert not report.unexpected, report.message()
    return model


def test_fixture_weights_fill_every_trained_parameter(reference_model, golden) -> None:
    report = load_lavis_state_dict(reference_model, golden["state_dict"], Path("golden"))
    assert report.clean, report.message()


def test_every_case_matches_reference(reference_model, golden) -> None:
    assert golden["cases"], "fixture has no cases"
    for case in golden["cases"]:
        name = case["name"]
        features = case["vit_features"]  # [B, T, N, C] before ln_vision
        frames = features.shape[1]
        state = reference_model.new_memory(case["text_ids"], case["text_atts"], int(case["memory_bank_length"]))
        bank_lengths = []
        with torch.inference_mode():
            for t in range(frames):
                bank_lengths.append(1 if state.visual is None else len(state.visual) + 1)
                frame = reference_model.vision_model.post_layernorm(features[:, t])
                output, state = reference_model.step(state, frame)
                expected_step = case["expected_qformer_per_step"][:, t]
                torch.testing.assert_close(output, expected_step, atol=TOLERANCE, rtol=0, msg=f"{name} frame {t}")
            llm_inputs = reference_model.language_inputs(output)
        torch.testing.assert_close(output, case["expected_qformer"], atol=TOLERANCE, rtol=0, msg=name)
        torch.testing.assert_close(llm_inputs, case["expected_llm_inputs"], atol=TOLERANCE, rtol=0, msg=name)
        assert bank_lengths == case["visual_bank_lengths"].tolist(), name


def test_compression_unit_cases(golden) -> None:
    assert golden["compress_cases"], "fixture has no compression cases"
    for case in golden["compress_cases"]:
        slots, sizes = compress_slots(case["bank"], case["sizes"])
        torch.testing.assert_close(slots, case["expected_bank"], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(sizes, case["expected_sizes"].to(sizes.dtype), atol=0, rtol=0)
