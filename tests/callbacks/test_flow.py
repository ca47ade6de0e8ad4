"""Gradient-flow images: shapes, determinism, odd values (zero, NaN, ±inf), sizes from 1 to 200 layers."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gradwatch.callbacks.flow import flow_bars, flow_heatmap

NAMES = [f"backbone.stage{i // 4}.block{i % 4}.conv" for i in range(12)]
STEPS = list(range(0, 400, 20))


def bars_values(n: int = len(NAMES), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = 10.0 ** rng.uniform(-7, -2, n)
    return mean, mean * 10.0 ** rng.uniform(0.5, 2, n)


def heat_values(layers: int = len(NAMES), steps: int = len(STEPS), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.linspace(-7, -1, layers)[:, None] + rng.normal(0, 0.3, (layers, steps))


def check_image(image: np.ndarray) -> None:
    assert isinstance(image, np.ndarray)
    assert image.dtype == np.uint8
    assert image.ndim == 3
    assert image.shape[2] == 3
    assert 300 <= image.shape[0] <= 1300
    assert 700 <= image.shape[1] <= 1300
    assert image.flags.c_contiguous
    assert image.min() < 100 < 200 < image.max()  # something drawn on a light background


@pytest.fixture(scope="module")
def bars_image() -> np.ndarray:
    return flow_bars(NAMES, *bars_values())


@pytest.fixture(scope="module")
def heat_image() -> np.ndarray:
    return flow_heatmap(NAMES, STEPS, heat_values())


def test_shape_and_dtype(bars_image: np.ndarray, heat_image: np.ndarray) -> None:
    check_image(bars_image)
    check_image(heat_image)


def test_same_input_same_image(bars_image: np.ndarray, heat_image: np.ndarray) -> None:
    assert np.array_equal(flow_bars(NAMES, *bars_values()), bars_image)
    assert np.array_equal(flow_heatmap(NAMES, STEPS, heat_values()), heat_image)


def test_different_input_different_image(bars_image: np.ndarray, heat_image: np.ndarray) -> None:
    other = flow_bars(NAMES, *bars_values(seed=1))
    assert other.shape == bars_image.shape
    assert not np.array_equal(other, bars_image)
    other = flow_heatmap(NAMES, STEPS, heat_values(seed=1))
    assert other.shape == heat_image.shape
    assert not np.array_equal(other, heat_image)


def test_title_is_drawn(bars_image: np.ndarray) -> None:
    assert not np.array_equal(flow_bars(NAMES, *bars_values(), title="step 7"), bars_image)


def red_pixels(image: np.ndarray) -> int:
    r, g, b = (image[..., i].astype(int) for i in range(3))
    return int(((r - g > 60) & (r - b > 60)).sum())


@pytest.mark.parametrize("bad", [0.0, np.nan, np.inf, -np.inf])
def test_bars_odd_values_do_not_raise(bad: float, bars_image: np.ndarray) -> None:
    mean, peak = bars_values()
    mean[3], peak[3], peak[7] = bad, bad, bad
    image = flow_bars(NAMES, mean, peak)
    check_image(image)
    assert not np.array_equal(image, bars_image)
    if np.isfinite(bad):
        assert red_pixels(image) == 0
    else:  # non-finite columns are marked in red
        assert red_pixels(image) > 0


@pytest.mark.parametrize("value", [0.0, np.nan, np.inf, 5e-324, 1e308, 1e-3])
def test_bars_all_values_alike(value: float) -> None:
    check_image(flow_bars(NAMES, [value] * len(NAMES), [value] * len(NAMES)))


def test_bars_extreme_range() -> None:
    check_image(flow_bars(["a", "b", "c"], [5e-324, 1.0, -2.0], [1e308, 1e-300, 1e-30]))


def test_bars_non_finite_run_of_many_layers() -> None:
    mean, peak = bars_values(200)
    mean[50:150], peak[50:150] = np.nan, np.nan
    check_image(flow_bars([f"layer{i}" for i in range(200)], mean, peak))


def test_heatmap_nan_columns_and_infinities(heat_image: np.ndarray) -> None:
    values = heat_values()
    values[:, 5:8] = np.nan  # not measured at these steps
    values[2, 10] = -np.inf  # zero norm
    values[4, 12] = np.inf
    image = flow_heatmap(NAMES, STEPS, values)
    check_image(image)
    assert not np.array_equal(image, heat_image)
    gray = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2]) & (np.abs(image[..., 0] - 189) < 3)
    assert gray.sum() > 1000  # the NaN columns are a neutral gray block


@pytest.mark.parametrize("value", [np.nan, -np.inf, np.inf, 0.0])
def test_heatmap_all_values_alike(value: float) -> None:
    check_image(flow_heatmap(NAMES, STEPS, np.full((len(NAMES), len(STEPS)), value)))


def test_one_layer_one_step() -> None:
    check_image(flow_bars(["fc"], [1e-3], [1e-2]))
    check_image(flow_heatmap(["fc"], [0], np.array([[-3.0]])))


def test_empty_inputs_render() -> None:
    check_image(flow_bars([], [], []))
    check_image(flow_heatmap([], [], np.zeros((0, 0))))
    check_image(flow_heatmap(["fc"], [], np.zeros((1, 0))))


def test_many_layers(heat_image: np.ndarray) -> None:
    names = [f"model.decoder.layers.{i}.self_attn.out_proj" for i in range(200)]
    bars = flow_bars(names, *bars_values(200))
    heatmap = flow_heatmap(names, range(0, 20_000, 100), heat_values(200, 200))
    check_image(bars)
    check_image(heatmap)
    assert heatmap.shape[0] > heat_image.shape[0]  # taller for more layers


def test_long_names_and_irregular_steps() -> None:
    names = ["x" * 200, "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q.r.s.t.u.v.w.x.y.z", "", "bad$\\frac$_{"]
    check_image(flow_bars(names, [1e-3] * 4, [1e-2] * 4))
    check_image(flow_heatmap(names, [3, 4, 10, 11, 500, 501, 502, 10_000], heat_values(4, 8)))
    check_image(flow_heatmap(names, [5, 3, 3, 1], heat_values(4, 4)))  # not increasing: labelled as given


def test_bars_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match=r"3 layers, 2 mean_abs and 3 max_abs"):
        flow_bars(["a", "b", "c"], [1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"2 layers, 2 mean_abs and 1 max_abs"):
        flow_bars(["a", "b"], [1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="one-dimensional"):
        flow_bars(["a"], [[1.0]], [1.0])


def test_heatmap_mismatched_shape() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\): got shape \(4, 3\)"):
        flow_heatmap(["a", "b", "c"], [0, 1, 2, 3], np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(2, 2\): got shape \(4,\)"):
        flow_heatmap(["a", "b"], [0, 1], np.zeros(4))


def test_png_round_trip(tmp_path: Path, bars_image: np.ndarray, heat_image: np.ndarray) -> None:
    for name, image in [("bars", bars_image), ("heatmap", heat_image)]:
        path = tmp_path / f"{name}.png"
        Image.fromarray(image).save(path)
        with Image.open(path) as read:
            read.verify()
        with Image.open(path) as read:
            assert read.format == "PNG"
            assert read.mode == "RGB"
            assert np.array_equal(np.asarray(read), image)


def test_no_figures_left_open() -> None:
    from matplotlib import _pylab_helpers

    pyplot_before = "matplotlib.pyplot" in sys.modules
    figures_before = _pylab_helpers.Gcf.get_num_fig_managers()
    flow_bars(["fc"], [1e-3], [1e-2])
    flow_heatmap(["fc"], [0], np.array([[-3.0]]))
    assert _pylab_helpers.Gcf.get_num_fig_managers() == figures_before
    if not pyplot_before:  # the module draws without pyplot's global state
        assert "matplotlib.pyplot" not in sys.modules


def test_threads_render_the_same_images(heat_image: np.ndarray) -> None:
    results: list[np.ndarray] = []

    def render() -> None:
        results.append(flow_heatmap(NAMES, STEPS, heat_values()))

    threads = [threading.Thread(target=render) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert all(np.array_equal(result, heat_image) for result in results)
