"""MA-LMM's training augmentation: one random resized crop and horizontal flip per clip.

MA-LMM trains on clips transformed as a whole (LAVIS' `RandomResizedCropVideo`, scale 0.5-1,
aspect 3/4-4/3, bicubic, then `RandomHorizontalFlipVideo`): every frame of a clip gets the same
crop and the same flip, so motion stays coherent. Here the crop is cut from the decoded frame and
the model's own image processor resizes it (bicubic, as for every frame), so augmented frames
differ from plain ones by the crop and flip only. The crop is drawn as torchvision's
`RandomResizedCrop.get_params` draws it, from a seed, so a resumed run sees the same crops.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

SCALE = (0.5, 1.0)  # of the frame's area
RATIO = (3 / 4, 4 / 3)  # width / height


@dataclass(frozen=True)
class Crop:
    """A box in pixels (top, left, height, width) and whether to mirror it."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def draw_crop(height: int, width: int, rng: random.Random) -> Crop:
    """A random box of 50-100% of the area with an aspect ratio within 3/4-4/3 (ten tries, then
    the largest centred box of an allowed ratio, as torchvision), and a coin for the flip."""
    area = height * width
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return Crop(rng.randint(0, height - h), rng.randint(0, width - w), h, w, rng.random() < 0.5)
    aspect = width / height
    if aspect < RATIO[0]:
        w, h = width, round(width / RATIO[0])
    elif aspect > RATIO[1]:
        h, w = height, round(height * RATIO[1])
    else:
        w, h = width, height
    return Crop((height - h) // 2, (width - w) // 2, h, w, rng.random() < 0.5)


class ClipAugment:
    """Crop and flip every frame of one clip alike: a callable on RGB uint8 frames [H, W, 3].

    The box is drawn for the first frame's size from `seed`; later frames (of the same video,
    so of the same size) get the same box.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.crop: Crop | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.crop is None:
            self.crop = draw_crop(image.shape[0], image.shape[1], random.Random(self.seed))
        c = self.crop
        region = image[c.top : c.top + c.height, c.left : c.left + c.width]
        return np.ascontiguousarray(region[:, ::-1] if c.flip else region)
