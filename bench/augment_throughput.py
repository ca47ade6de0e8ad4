"""How fast are gradwatch's albumentations presets, alone and behind a 2-worker DataLoader?

Each preset against its torchvision v2 translation in one process, then each preset's training DataLoader. Targets:
at least 1.5× torchvision's images per second for every preset at 32×32 and 224×224, and at least 5,000 images per
second out of a 2-worker DataLoader at 32×32. ``.venv/bin/python bench/augment_throughput.py`` (about 3 minutes on 2
cores); ``--quick`` is a smoke run; ``--json PATH``. What it measures and how to read it: ``bench/README.md``.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import argparse
import copy
import gc
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
import torchvision
from common import SEED, add_quick_and_json, finish, write_json
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from gradwatch.data.augment import collate_images, preset, reseed
from gradwatch.data.base import EpochSampler, _quiesce_opencv
from gradwatch.data.images import ImageDataset
from gradwatch.data.transforms import Cutout, RandomShift

CHANNELS = 3
SIZES = (32, 224)
LOADER_SIZE = 32
BATCH_SIZE = 256
PRESET_NAMES = ("light", "standard", "strong")
LOADER_PRESETS = ("none", *PRESET_NAMES)
TARGET_RATIO = 1.5
TARGET_LOADER = 5_000.0
POOL = 512  # distinct images per size in part 1: enough that caches see a stream, few enough to make quickly
#: Part 1 runs this fraction of ``--single-images`` at 224×224: an image there costs 10-50× one at 32×32.
LARGE_FRACTION = 0.1
#: ``HueSaturationValue`` adds up to ±limit to a 0..255 saturation; ``ColorJitter`` multiplies it. At saturations of
#: 100-128 (the photos here average 128) an added 25 is a factor of 1 ± 0.2-0.25. The cost does not depend on it.
TYPICAL_SATURATION = 100.0
DATA_KINDS = {
    "photos": "crops of scikit-learn's sample photographs (real RGB)",
    "digits": "scikit-learn's digits, tinted and upscaled",
    "noise": "uniform random uint8 noise (CIFAR-like shape)",
}


# --- image data -------------------------------------------------------------------------------------------------


def photo_crops(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random square crops of scikit-learn's two sample photographs, resized to ``size``."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    out = np.empty((n, size, size, CHANNELS), np.uint8)
    for i in range(n):
        photo = photos[rng.integers(len(photos))]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(size, h), min(h, w) + 1))
        y, x = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        crop = photo[y : y + side, x : x + side]
        interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
        out[i] = cv2.resize(crop, (size, size), interpolation=interpolation)
    return out


def tinted_digits(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` of scikit-learn's digits in a random foreground and background colour, upscaled to ``size``."""
    from sklearn.datasets import load_digits

    digits = load_digits().images / 16.0  # ink in [0, 1]
    out = np.empty((n, size, size, CHANNELS), np.uint8)
    for i in range(n):
        ink = digits[i % len(digits)][..., None]
        fg, bg = rng.integers(0, 256, (2, CHANNELS))
        small = np.round(bg + (fg - bg) * ink).astype(np.uint8)
        out[i] = cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)
    return out


def make_images(kind: str, n: int, size: int, seed: int = SEED) -> np.ndarray:
    """uint8 ``(n, size, size, 3)`` images of one of :data:`DATA_KINDS`."""
    rng = np.random.default_rng(seed)
    if kind == "photos":
        return photo_crops(n, size, rng)
    if kind == "digits":
        return tinted_digits(n, size, rng)
    return rng.integers(0, 256, (n, size, size, CHANNELS), dtype=np.uint8)


# --- the torchvision side ---------------------------------------------------------------------------------------


def _with_probability(transform: Callable[..., Any], p: float) -> Callable[..., Any]:
    return transform if p >= 1.0 else v2.RandomApply([transform], p=p)


def _max_abs(limits: Sequence[float]) -> float:
    return max(abs(limit) for limit in limits)


def translate(transform: Any, p: float | None = None) -> Callable[..., Any]:
    """The torchvision v2 equivalent of one albumentations transform, applied with ``p`` (its own by default).

    Raises:
        NotImplementedError: a transform, or a setting of one, with no equivalent written here yet.
    """
    p = transform.p if p is None else p
    if isinstance(transform, RandomShift):
        return _with_probability(ShiftLike(transform.max_shift, transform.fill), p)
    if isinstance(transform, Cutout):
        low, high = transform.size_range
        scale, ratio = (low * low, high * high), (low / high, high / low)
        return v2.RandomErasing(p=p, scale=scale, ratio=ratio, value=transform.fill)
    if isinstance(transform, A.HorizontalFlip):
        return v2.RandomHorizontalFlip(p=p)
    if isinstance(transform, A.RandomBrightnessContrast):
        jitter = v2.ColorJitter(
            brightness=_max_abs(transform.brightness_limit), contrast=_max_abs(transform.contrast_limit)
        )
        return _with_probability(jitter, p)
    if isinstance(transform, A.Affine):
        if transform.translate_percent is not None or any(transform.translate_px[axis] != (0, 0) for axis in "xy"):
            raise NotImplementedError(f"Affine with a translation: {transform!r}")
        linear = transform.interpolation == cv2.INTER_LINEAR
        affine = v2.RandomAffine(
            degrees=transform.rotate,
            scale=transform.scale["x"],  # torchvision draws one factor for both axes
            shear=(*transform.shear["x"], *transform.shear["y"]),
            interpolation=v2.InterpolationMode.BILINEAR if linear else v2.InterpolationMode.NEAREST,
            fill=transform.fill,
        )
        return _with_probability(affine, p)
    if isinstance(transform, A.HueSaturationValue):
        jitter = v2.ColorJitter(
            brightness=_max_abs(transform.val_shift_limit) / 255.0,
            saturation=_max_abs(transform.sat_shift_limit) / TYPICAL_SATURATION,
            hue=_max_abs(transform.hue_shift_limit) / 180.0,  # OpenCV's uint8 hue runs over 0..179
        )
        return _with_probability(jitter, p)
    if isinstance(transform, A.CoarseDropout):
        (h0, h1), (w0, w1) = transform.hole_height_range, transform.hole_width_range
        if tuple(transform.num_holes_range) != (1, 1) or max(h1, w1) > 1 or isinstance(h1, int):
            raise NotImplementedError(f"CoarseDropout other than one hole sized in fractions: {transform!r}")
        return v2.RandomErasing(p=p, scale=(h0 * w0, h1 * w1), ratio=(h0 / w1, h1 / w0), value=transform.fill)
    raise NotImplementedError(f"no torchvision equivalent written for {transform!r}")


class ShiftLike:
    """torchvision's form of a random shift, ``RandomCrop(size, padding=max_shift)``, made once per image size."""

    def __init__(self, max_shift: int, fill: float) -> None:
        self.max_shift = max_shift
        self.fill = fill
        self.crops: dict[tuple[int, int], v2.RandomCrop] = {}

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        size = (image.shape[-2], image.shape[-1])
        if size not in self.crops:
            self.crops[size] = v2.RandomCrop(size, padding=self.max_shift, fill=self.fill)
        return self.crops[size](image)


def torchvision_steps(pipeline: A.Compose, *, p: float | None = None) -> list[tuple[str, Callable[..., Any]]]:
    """``(label, torchvision transform)`` per step of an albumentations pipeline."""
    return [(type(transform).__name__, translate(transform, p)) for transform in pipeline.transforms]


def torchvision_equivalent(pipeline: A.Compose) -> v2.Compose:
    """The closest torchvision v2 pipeline to an albumentations one: same steps, parameters and probabilities."""
    return v2.Compose([transform for _, transform in torchvision_steps(pipeline)])


# --- part 1: single process -------------------------------------------------------------------------------------


def rate_albumentations(pipeline: Callable[..., Any], images: Sequence[np.ndarray], n: int) -> float:
    """Images per second through an albumentations transform (or pipeline), ``n`` images cycling the pool."""
    reseed(pipeline, SEED)
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        pipeline(image=images[i % len(images)])["image"]
    return n / (time.perf_counter() - start)


def rate_torchvision(pipeline: Callable[..., Any], images: Sequence[torch.Tensor], n: int) -> float:
    """Images per second through a torchvision transform, ``n`` images cycling the pool."""
    torch.manual_seed(SEED)
    gc.collect()
    start = time.perf_counter()
    for i in range(n):
        pipeline(images[i % len(images)])
    return n / (time.perf_counter() - start)


@dataclass
class Pool:
    """The same images in each side's layout, one array or tensor per image (indexing is not timed)."""

    hwc: list[np.ndarray]
    chw: list[torch.Tensor]

    @classmethod
    def make(cls, kind: str, n: int, size: int) -> Pool:
        images = make_images(kind, n, size)
        tensors = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return cls(hwc=list(images), chw=list(tensors.unbind(0)))


@dataclass
class Rates:
    """Images per second of the repetitions of one measurement."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def cell(self) -> str:
        return f"{self.median:,.0f} ({min(self.values):,.0f}–{max(self.values):,.0f})"


def check_same_shapes(album: A.Compose, tv: v2.Compose, pool: Pool) -> None:
    """Both sides must hand back an image of the input's size and dtype, or the comparison means nothing."""
    a, t = album(image=pool.hwc[0])["image"], tv(pool.chw[0])
    if a.shape != pool.hwc[0].shape or a.dtype != np.uint8 or t.shape != pool.chw[0].shape or t.dtype != torch.uint8:
        raise RuntimeError(f"shapes differ: albumentations {a.shape} {a.dtype}, torchvision {tuple(t.shape)} {t.dtype}")


def single_process(args: argparse.Namespace) -> dict[tuple[int, str], dict[str, Rates]]:
    """Part 1: interleaved runs of each preset and its torchvision equivalent, per size."""
    results: dict[tuple[int, str], dict[str, Rates]] = {}
    for size in SIZES:
        pool = Pool.make(args.data, min(POOL, args.single_images), size)
        n = args.single_images if size == LOADER_SIZE else max(10, round(args.single_images * LARGE_FRACTION))
        sides = {}
        for name in PRESET_NAMES:
            album = preset(name, size, CHANNELS)
            tv = torchvision_equivalent(album)
            check_same_shapes(album, tv, pool)
            sides[name] = (album, tv)
            rate_albumentations(album, pool.hwc, max(10, n // 10))  # untimed: first-use costs
            rate_torchvision(tv, pool.chw, max(10, n // 10))
            results[size, name] = {"albumentations": Rates(), "torchvision": Rates()}
        for _ in range(args.repeats):
            for name, (album, tv) in sides.items():
                results[size, name]["albumentations"].values.append(rate_albumentations(album, pool.hwc, n))
                results[size, name]["torchvision"].values.append(rate_torchvision(tv, pool.chw, n))
    return results


def report_single(args: argparse.Namespace, results: dict[tuple[int, str], dict[str, Rates]]) -> None:
    n_large = max(10, round(args.single_images * LARGE_FRACTION))
    print(
        f"### Single process, one thread: images/s, median (slowest–fastest) of {args.repeats} interleaved runs"
        f" of {args.single_images:,} images at {LOADER_SIZE}×{LOADER_SIZE}, {n_large:,} at 224×224"
    )
    print()
    print(f"| size | preset | albumentations | torchvision v2 | ratio A / TV | ≥ {TARGET_RATIO} |")
    print("|---|---|---:|---:|---:|:---:|")
    for (size, name), sides in results.items():
        ratio = sides["albumentations"].median / sides["torchvision"].median
        verdict = "yes" if ratio >= TARGET_RATIO else "**NO**"
        print(
            f"| {size}×{size} | {name} | {sides['albumentations'].cell()} | {sides['torchvision'].cell()}"
            f" | {ratio:.2f} | {verdict} |"
        )
    print()


# --- part 2: DataLoader -----------------------------------------------------------------------------------------


def build_loader(name: str, images: np.ndarray, labels: torch.Tensor, workers: int) -> tuple[DataLoader, EpochSampler]:
    """The training loader ``ImageDataModule`` builds for ``augment=name``, and its sampler."""
    dataset = ImageDataset(images, labels, transform=preset(name, LOADER_SIZE, CHANNELS))
    sampler = EpochSampler(len(dataset), seed=SEED, sample_seeds=dataset.takes_sample_seeds)
    _quiesce_opencv()  # a worker forked while OpenCV's pool holds threads deadlocks
    loader = DataLoader(
        dataset,
        batch_size=BATCH_SIZE,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=True,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate_images,
    )
    return loader, sampler


def rate_epoch(loader: DataLoader, sampler: EpochSampler, epoch: int) -> float:
    """Images per second over one whole epoch, from ``iter(loader)`` to the last batch."""
    sampler.set_epoch(epoch)
    gc.collect()
    count = 0
    start = time.perf_counter()
    for images, _ in loader:
        count += len(images)
    return count / (time.perf_counter() - start)


def data_loader(args: argparse.Namespace) -> dict[str, Rates]:
    """Part 2: each preset's loader, epochs interleaved across the presets."""
    images = make_images(args.data, args.images, LOADER_SIZE)
    labels = torch.as_tensor(np.random.default_rng(SEED).integers(0, 10, args.images), dtype=torch.long)
    loaders = {name: build_loader(name, images, labels, args.workers) for name in LOADER_PRESETS}
    # Untimed: a whole epoch rather than one batch, because a loader left after one batch still has prefetched
    # batches in flight, which would run beside (and be charged to) the next loader timed.
    for loader, sampler in loaders.values():
        rate_epoch(loader, sampler, 0)
    results = {name: Rates() for name in loaders}
    for epoch in range(1, args.epochs + 1):
        for name, (loader, sampler) in loaders.items():
            results[name].values.append(rate_epoch(loader, sampler, epoch))
    del loaders  # persistent workers go with their loaders, before anything else is timed
    gc.collect()
    return results


def report_loader(args: argparse.Namespace, results: dict[str, Rates]) -> None:
    print(
        f"### DataLoader, {args.workers} workers, batch {BATCH_SIZE}, {LOADER_SIZE}×{LOADER_SIZE} RGB,"
        f" {args.images:,} images: images/s, median (slowest–fastest) of {args.epochs} epochs"
    )
    print()
    print(f"| preset | images/s | ≥ {TARGET_LOADER:,.0f} |")
    print("|---|---:|:---:|")
    for name, rates in results.items():
        print(f"| {name} | {rates.cell()} | {'yes' if rates.median >= TARGET_LOADER else '**NO**'} |")
    print()


# --- profile ----------------------------------------------------------------------------------------------------


def album_steps(pipeline: A.Compose) -> tuple[list[tuple[str, Callable[..., Any], float]], A.Compose]:
    """``(label, step at p=1, configured p)`` per step, and all of them at p=1 in one ``A.Compose``.

    Steps are called bare, without a ``Compose`` around them, so the table separates what the transforms cost from
    what ``Compose`` adds.
    """
    originals = list(pipeline.transforms)
    at_one = [copy.deepcopy(transform) for transform in originals]
    for transform in at_one:
        transform.p = 1.0
    steps = [(type(t).__name__, t, original.p) for t, original in zip(at_one, originals, strict=True)]
    return steps, A.Compose(at_one)


def profile_runs(
    configured: A.Compose, pool: Pool
) -> tuple[dict[str, Callable[[int], float]], list[tuple[str, float]]]:
    """Timed runs (``n`` images -> images/s) keyed ``"A label"`` / ``"TV label"``, and each step's configured p."""
    album, together = album_steps(configured)
    tv = torchvision_steps(configured, p=1.0)
    runs: dict[str, Callable[[int], float]] = {}
    for (label, a_step, _), (_, tv_step) in zip(album, tv, strict=True):
        runs[f"A {label}"] = lambda n, step=a_step: rate_albumentations(step, pool.hwc, n)
        runs[f"TV {label}"] = lambda n, step=tv_step: rate_torchvision(step, pool.chw, n)
    tv_together = v2.Compose([step for _, step in tv])
    runs["A all, p=1, one Compose"] = lambda n: rate_albumentations(together, pool.hwc, n)
    runs["TV all, p=1, one Compose"] = lambda n: rate_torchvision(tv_together, pool.chw, n)
    tv_configured = torchvision_equivalent(configured)
    runs["A preset as configured"] = lambda n: rate_albumentations(configured, pool.hwc, n)
    runs["TV preset as configured"] = lambda n: rate_torchvision(tv_configured, pool.chw, n)
    return runs, [(label, p) for label, _, p in album]


def profile(args: argparse.Namespace, name: str = "strong") -> None:
    """Per-transform cost of a preset at p=1, both sides and sizes, medians of ``--repeats`` runs."""
    columns: dict[str, dict[str, float]] = {}  # "A 32" -> label -> µs per image
    steps: list[tuple[str, float]] = []
    for size in SIZES:
        pool = Pool.make(args.data, min(POOL, args.single_images), size)
        # A quarter of part 1's count: the steps at p=1 on both sides cost some ten times the presets.
        n = max(10, round(args.single_images * (1.0 if size == LOADER_SIZE else LARGE_FRACTION) / 4))
        runs, steps = profile_runs(preset(name, size, CHANNELS), pool)
        for run in runs.values():
            run(max(10, n // 10))  # untimed: first-use costs
        rates: dict[str, list[float]] = {key: [] for key in runs}
        for _ in range(args.repeats):
            for key, run in runs.items():
                rates[key].append(run(n))
        for key, values in rates.items():
            side, label = key.split(" ", 1)
            columns.setdefault(f"{side} {size}", {})[label] = 1e6 / statistics.median(values)

    print(f"### Profile of `{name}`: µs per image, each transform alone at p=1 (median of {args.repeats} runs)")
    print()
    header = [f"{side} {size}×{size}" for size in SIZES for side in ("albumentations", "torchvision")]
    print(f"| step | p | {' | '.join(header)} | albumentations p × µs, {LOADER_SIZE}×{LOADER_SIZE} |")
    print("|---|---:|" + "---:|" * (len(header) + 1))
    keys = [f"{side} {size}" for size in SIZES for side in ("A", "TV")]
    for label, p in steps:
        cells = " | ".join(f"{columns[key][label]:,.1f}" for key in keys)
        print(f"| {label} | {p:g} | {cells} | {p * columns[f'A {LOADER_SIZE}'][label]:,.1f} |")
    sums = " | ".join(f"{sum(columns[key][label] for label, _ in steps):,.1f}" for key in keys)
    expected_sum = sum(p * columns[f"A {LOADER_SIZE}"][label] for label, p in steps)
    print(f"| sum of the steps | | {sums} | {expected_sum:,.1f} |")
    for label in ("all, p=1, one Compose", "preset as configured"):
        cells = " | ".join(f"{columns[key][label]:,.1f}" for key in keys)
        print(f"| {label} | | {cells} | |")
    print()


# --- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved runs per side in part 1 (default: 5)")
    parser.add_argument(
        "--single-images",
        type=int,
        default=2000,
        help=f"images per part-1 run at 32×32; {LARGE_FRACTION:g} of it at 224×224 (default: 2000)",
    )
    parser.add_argument("--images", type=int, default=20_000, help="DataLoader dataset size (default: 20000)")
    parser.add_argument("--epochs", type=int, default=5, help="timed DataLoader epochs per preset (default: 5)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--data", choices=DATA_KINDS, default="photos", help="image data (default: photos)")
    parser.add_argument("--profile", action="store_true", help="also break the strong preset down per transform")
    add_quick_and_json(parser, "a tiny run to check the script works (seconds); numbers meaningless")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.single_images, args.images, args.epochs = 2, 100, 1024, 2
    if min(args.repeats, args.single_images, args.images, args.epochs, args.workers) < 1:
        parser.error("--repeats, --single-images, --images, --epochs and --workers must be >= 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__},"
        f" albumentations {A.__version__}, opencv {cv2.__version__}, numpy {np.__version__};"
        f" {os.cpu_count()} CPUs"
    )
    print(f"images: {DATA_KINDS[args.data]} (--data {args.data}), RGB uint8{'; --quick' if args.quick else ''}")
    print()
    start = time.perf_counter()
    single = single_process(args)
    report_single(args, single)
    loader = data_loader(args)
    report_loader(args, loader)
    if args.profile:
        print(f"(parts 1 and 2 took {time.perf_counter() - start:.0f} s)")
        cv2.setNumThreads(1)  # part 2 stopped OpenCV's pool for the workers; profile as part 1 ran
        profile(args)
    write_json(
        args.json,
        {
            "config": vars(args),
            "versions": {
                "torch": torch.__version__,
                "torchvision": torchvision.__version__,
                "albumentations": A.__version__,
            },
            "single_images_per_s": {
                f"{size}/{name}": {side: rates.values for side, rates in sides.items()}
                for (size, name), sides in single.items()
            },
            "loader_images_per_s": {name: rates.values for name, rates in loader.items()},
        },
    )
    finish(start)


if __name__ == "__main__":
    main()
