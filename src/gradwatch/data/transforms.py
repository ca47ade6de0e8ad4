"""Two albumentations transforms the presets use, for speed on small images.

At 32×32 an albumentations call costs far more in Python than in pixels: ``PadIfNeeded`` + ``RandomCrop`` spend
about 30-60 µs and ``CoarseDropout`` about 200 µs per image on parameter handling, enough to starve a 2-core
DataLoader (bench/augment_throughput.py). These do the same work in a few array operations. They are ordinary
albumentations transforms: they compose, take the pipeline's seeded generators, and round-trip through
``albumentations.save`` / ``load`` (as ``gradwatch.data.transforms.<name>``, once this module is imported).
"""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np


class RandomShift(A.ImageOnlyTransform):
    """Shift the image by up to ``max_shift`` pixels along each axis, filling the uncovered border with ``fill``.

    The same as padding by ``max_shift`` and randomly cropping back to the original size (the classic CIFAR
    recipe), in one array copy. Images only: it does not move masks, boxes or keypoints.

    Args:
        max_shift: Largest shift in pixels, drawn uniformly in ``[-max_shift, max_shift]`` per axis.
        fill: Value of the uncovered pixels.
        p: Probability of applying the shift.

    """

    def __init__(self, max_shift: int = 4, fill: float = 0, p: float = 1.0) -> None:
        super().__init__(p=p)
        self.max_shift = max_shift
        self.fill = fill

    def get_params(self) -> dict[str, Any]:
        """The shift ``(dy, dx)``."""
        m = self.max_shift
        return {"dy": self.py_random.randint(-m, m), "dx": self.py_random.randint(-m, m)}

    def apply(self, img: np.ndarray, dy: int = 0, dx: int = 0, **params: Any) -> np.ndarray:
        """``img`` shifted down by ``dy`` and right by ``dx``."""
        h, w = img.shape[:2]
        out = np.full_like(img, self.fill)
        if abs(dy) < h and abs(dx) < w:
            out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
                max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """The arguments ``albumentations.save`` records."""
        return ("max_shift", "fill")


class Cutout(A.ImageOnlyTransform):
    """Fill one random rectangle with ``fill`` (DeVries & Taylor's cutout: coarse dropout with one hole).

    Args:
        size_range: Height and width of the hole as fractions of the image's, each drawn uniformly in this range.
        fill: Value of the hole's pixels.
        p: Probability of cutting a hole.

    """

    def __init__(self, size_range: tuple[float, float] = (0.2, 0.4), fill: float = 0, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.size_range = tuple(size_range)
        self.fill = fill

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        """The hole ``(top, left, height, width)`` for an image of ``params["shape"]``."""
        h, w = params["shape"][:2]
        low, high = self.size_range
        rng = self.py_random
        hole_h, hole_w = max(1, round(h * rng.uniform(low, high))), max(1, round(w * rng.uniform(low, high)))
        return {"hole": (rng.randint(0, h - hole_h), rng.randint(0, w - hole_w), hole_h, hole_w)}

    def apply(self, img: np.ndarray, hole: tuple[int, int, int, int] = (0, 0, 0, 0), **params: Any) -> np.ndarray:
        """A copy of ``img`` with the hole filled."""
        top, left, hole_h, hole_w = hole
        out = img.copy()
        out[top : top + hole_h, left : left + hole_w] = self.fill
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """The arguments ``albumentations.save`` records."""
        return ("size_range", "fill")
