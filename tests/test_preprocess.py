"""Frames are preprocessed as the model was trained: the model folder's own processor settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from transformers import BlipImageProcessorPil

from malmm_cli.media.probe import probe
from malmm_cli.media.video import VideoReader
from malmm_cli.reading.pipeline import Sampling, VideoStream, preprocess
from tests import media


def by_hand(image: np.ndarray, size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """The BLIP recipe written out: bicubic (antialiased) resize, scale to [0, 1], normalise, CHW."""
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    normalised = (resized - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy())


def test_settings_come_from_the_model_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    config_file = folder / "preprocessor_config.json"
    config = json.loads(config_file.read_text())
    config.update(size={"height": 40, "width": 40}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3])
    config_file.write_text(json.dumps(config))
    malmm = SimpleNamespace(image_processor=BlipImageProcessorPil.from_pretrained(folder))

    video = media.make_video(tmp_path / "clip.mp4", seconds=2, fps=10, size=(96, 64))
    with VideoReader(video, probe(video)) as reader:
        frames = list(reader.frames([0.25, 1.05, 1.75]))
    assert len(frames) == 3
    for frame in frames:
        pixels = preprocess(malmm, frame.image)
        assert pixels.shape == (3, 40, 40) and pixels.dtype == torch.float32
        torch.testing.assert_close(pixels, by_hand(frame.image, 40, config["image_mean"], config["image_std"]),
                                   atol=1e-5, rtol=0)  # fmt: skip
        processor = malmm.image_processor(images=Image.fromarray(frame.image), return_tensors="pt").pixel_values[0]
        torch.testing.assert_close(pixels, processor, atol=1e-5, rtol=0)


def test_channels_are_rgb(tiny_malmm) -> None:
    red = np.zeros((48, 64, 3), dtype=np.uint8)
    red[..., 0] = 255
    pixels = preprocess(tiny_malmm, red)
    assert pixels[0].mean() > 1.0 and pixels[1].mean() < -1.0 and pixels[2].mean() < -1.0


def test_stream_pixels_match_the_processor_on_the_same_frames(tiny_malmm, tmp_path: Path, monkeypatch) -> None:
    """The stream's pixels (decoded in a thread, batched) are exactly the processor's on its frames."""
    video = media.make_video(tmp_path / "clip.mp4", seconds=2, fps=10, size=(64, 48))
    seen: list[torch.Tensor] = []  # pixels handed to the vision model, in order
    encode = tiny_malmm.encode_frames

    def spy(pixels: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        seen.extend(pixels)
        return encode(pixels, normalize)

    monkeypatch.setattr(tiny_malmm, "encode_frames", spy)
    with VideoStream(tiny_malmm, video, Sampling(frames=5), batch_size=2) as stream:
        samples = [sample for sample, _ in stream]
    with VideoReader(video, probe(video)) as reader:  # the same frames, decoded again
        frames = list(reader.frames([sample.target for sample in samples]))
    assert len(frames) == len(seen) == 5
    for frame, sample, pixels in zip(frames, samples, seen, strict=True):
        assert frame.time == sample.time
        expected = tiny_malmm.image_processor(images=Image.fromarray(frame.image), return_tensors="pt").pixel_values
        torch.testing.assert_close(pixels, expected[0], atol=1e-5, rtol=0)
