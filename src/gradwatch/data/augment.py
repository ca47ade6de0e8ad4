"""Training-time augmentation with albumentations: named presets, a user pipeline, or a serialized file.

Presets scale with the image: shifts and holes are fractions of the side, so ``standard`` shifts a 32×32
CIFAR image by up to 4 pixels (the classic pad-and-crop recipe) and an 8×8 digit by 1. Colour changes apply to
RGB only, and mirroring only where the DataModule says a mirrored image keeps its label (not for digits).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradwatch.errors import ConfigError, unknown_choice

PRESETS = ("none", "light", "standard", "strong")
AUGMENT_FILE_SUFFIXES = {".yaml": "yaml", ".yml": "yaml", ".json": "json"}

#: What ``augment`` accepts: a preset name, a path to an albumentations YAML / JSON file, a dict as written by
#: ``albumentations.to_dict``, or an albumentations transform (any callable taking ``image=``).
AugmentType = str | dict | Callable[..., Any]


def _albumentations() -> Any:
    import albumentations as A

    import gradwatch.data.transforms  # noqa: F401  registers our transforms, so saved pipelines that use them load

    return A


def preset(name: str, size: int | tuple[int, int], channels: int, *, mirror: bool = True) -> Any:
    """The albumentations pipeline of a named preset, or ``None`` for ``none``.

    Args:
        name: One of :data:`PRESETS`.
        size: Side, or ``(height, width)``, of the images it receives; it returns the same size.
        channels: 1 (grayscale) or 3 (RGB); colour jitter needs RGB.
        mirror: Whether a horizontally flipped image keeps its label.

    Raises:
        ConfigError: an unknown name.

    Example::

        >>> pipeline = preset("standard", 32, 3)
        >>> pipeline(image=np.zeros((32, 32, 3), np.uint8))["image"].shape
        (32, 32, 3)

    """
    if name not in PRESETS:
        raise ConfigError(
            unknown_choice("augment preset", name, PRESETS) + "; or a path to an albumentations .yaml / .json file",
            param="augment",
        )
    if name == "none":
        return None
    import cv2

    from gradwatch.data.transforms import Cutout, RandomShift

    A = _albumentations()
    side = min((size, size) if isinstance(size, int) else size)
    flip = [A.HorizontalFlip(p=0.5)] if mirror else []
    if name == "light":
        return A.Compose([RandomShift(max_shift=max(1, round(side / 16))), *flip])
    standard = [
        RandomShift(max_shift=max(1, round(side / 8))),
        *flip,
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
    ]
    if name == "standard":
        return A.Compose(standard)
    # An affine warp costs ~200 µs per image in albumentations' Python whatever the size: applied to a third of
    # the images, so the DataLoader keeps ahead of the model on 2 cores.
    affine = A.Affine(rotate=(-15, 15), scale=(0.9, 1.1), shear=(-8, 8), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.3)
    colour = [A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=25, val_shift_limit=0, p=0.3)]
    return A.Compose([*standard, affine, *(colour if channels == 3 else []), Cutout(size_range=(0.2, 0.4), p=0.5)])


def load_augment_file(path: Path) -> Any:
    """An albumentations pipeline from a file written by ``albumentations.save`` (YAML or JSON, by suffix).

    Raises:
        ConfigError: the file is missing, has another suffix, or albumentations cannot parse it (its message kept).
    """
    data_format = AUGMENT_FILE_SUFFIXES.get(path.suffix.lower())
    if data_format is None:
        raise ConfigError(f"augment file {str(path)!r} must end in .yaml, .yml or .json", param="augment")
    if not path.is_file():
        raise ConfigError(f"augment file {str(path)!r} does not exist", param="augment")
    try:
        return _albumentations().load(str(path), data_format=data_format)
    except Exception as error:  # albumentations raises whatever its parser or transform constructors raise
        raise ConfigError(
            f"augment file {str(path)!r} is not an albumentations pipeline: {type(error).__name__}: {error}",
            param="augment",
        ) from error


def resolve_augment(augment: AugmentType, size: tuple[int, int], channels: int, *, mirror: bool = True) -> Any:
    """Turn any accepted ``augment`` value into an albumentations pipeline (``None`` for no augmentation).

    Raises:
        ConfigError: an unknown preset, a bad file, or a dict albumentations cannot read.
    """
    if isinstance(augment, dict):
        try:
            return _albumentations().from_dict(augment)
        except Exception as error:
            raise ConfigError(f"augment dict is not an albumentations pipeline: {error}", param="augment") from error
    if not isinstance(augment, str):
        return augment
    if Path(augment).suffix.lower() in AUGMENT_FILE_SUFFIXES or "/" in augment:
        return load_augment_file(Path(augment))
    return preset(augment, size, channels, mirror=mirror)


def describe_augment(augment: AugmentType) -> str | dict:
    """A loggable form of ``augment``: names and paths as given, pipelines as ``albumentations.to_dict``."""
    if isinstance(augment, str | dict):
        return augment
    try:
        return _albumentations().to_dict(augment)
    except Exception:  # a transform albumentations cannot serialize (a Lambda, a user class): log its repr
        return repr(augment)


def reseed(transform: Any, seed: int) -> None:
    """Give an albumentations pipeline generators seeded for one sample; other callables are left alone.

    One numpy and one Python generator shared by every transform of the pipeline (``set_random_state``), rather than
    ``set_random_seed``, which hands each transform an identically seeded stream and so couples their draws.
    """
    if hasattr(transform, "set_random_state"):
        transform.set_random_state(np.random.default_rng(seed), random.Random(seed))


def to_tensor(image: Any) -> torch.Tensor:
    """A ``(C, H, W)`` tensor from a transform's output: uint8 stays uint8 (see :func:`collate_images`).

    Float arrays and tensors (a user pipeline ending in ``Normalize`` / ``ToTensorV2``) pass through as they are.
    """
    if isinstance(image, torch.Tensor):
        return image
    tensor = torch.from_numpy(np.ascontiguousarray(image))
    return (tensor.unsqueeze(-1) if tensor.ndim == 2 else tensor).permute(2, 0, 1)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in ``[-1, 1]``; anything else (already normalized by a user pipeline) as float."""
    if images.dtype == torch.uint8:
        return images.float().div_(127.5).sub_(1.0)
    return images.float()


def collate_images(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, label)`` samples and map the images to float once per batch (cheaper than per sample)."""
    images, labels = zip(*samples, strict=True)
    return to_unit_range(torch.stack(images)), torch.stack(labels)
