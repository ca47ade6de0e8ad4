"""Fused statistics equal the plain per-parameter computation; one host transfer per measurement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch.health import GradientStatistics, find_layers
from gradwatch.health.stats import HISTOGRAM_EDGES


@pytest.fixture
def model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    model(torch.randn(32, 6)).pow(2).mean().backward()
    return model


def layer_norm(tensors):
    return math.sqrt(sum(float(t.detach().double().pow(2).sum()) for t in tensors))


def test_norms_equal_the_plain_computation(model):
    m = GradientStatistics(find_layers(model)).measure()
    linears = [model[0], model[2], model[4]]
    assert m.names == ("0", "2", "4")
    expected = [layer_norm([p.grad for p in layer.parameters()]) for layer in linears]
    assert m.grad_norm == pytest.approx(expected, rel=1e-5)
    assert m.param_norm == pytest.approx([layer_norm(layer.parameters()) for layer in linears], rel=1e-5)
    assert m.total_norm == pytest.approx(layer_norm([p.grad for p in model.parameters()]), rel=1e-5)
    assert m.attenuation == pytest.approx(math.log10(expected[0] / expected[-1]))
    assert m.update_norm is None
    assert m.nonfinite.tolist() == [0, 0, 0]


def test_measure_copies_to_the_host_once(model, monkeypatch):
    stats = GradientStatistics(find_layers(model), histograms=True)
    stats.snapshot()
    copies = []
    original = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **k: copies.append(self.shape) or original(self, *a, **k))
    stats.measure()
    assert len(copies) == 1


def test_update_norm_is_the_change_since_the_snapshot(model):
    stats = GradientStatistics(find_layers(model))
    stats.snapshot()
    before = [p.detach().clone() for p in model.parameters()]
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    m = stats.measure()
    changes = [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]
    expected = [layer_norm(changes[0:2]), layer_norm(changes[2:4]), layer_norm(changes[4:6])]
    assert m.update_norm == pytest.approx(expected, rel=1e-4)
    assert m.update_ratio == pytest.approx(np.array(expected) / m.param_norm, rel=1e-4)
    assert stats.measure().update_norm is None  # a snapshot serves one measurement


def test_layers_without_a_gradient_are_not_measured(model):
    model[4].weight.grad = None
    model[4].bias.grad = None
    m = GradientStatistics(find_layers(model)).measure()
    assert m.measured.tolist() == [True, True, False]
    assert math.isnan(m.grad_norm[2])
    assert m.attenuation is not None  # first and last *measured* layers


def test_nonfinite_elements_are_counted_per_layer(model):
    model[2].weight.grad[0, :3] = math.nan
    model[2].bias.grad[1] = math.inf
    stats = GradientStatistics(find_layers(model))
    m = stats.measure()
    assert m.nonfinite.tolist() == [0, 4, 0]
    assert m.measured.all()
    assert not stats.finite()


def test_histograms_count_every_element_with_an_explicit_zero_bucket(model):
    model[0].weight.grad[:2] = 0.0
    m = GradientStatistics(find_layers(model), histograms=True).measure()
    assert m.histograms.shape == (3, len(HISTOGRAM_EDGES))
    assert m.histograms.sum(axis=1).tolist() == [6 * 16 + 16, 16 * 16 + 16, 16 * 3 + 3]
    assert m.histograms[0, 0] == 2 * 6  # the zero bucket
    magnitudes = model[4].weight.grad.abs().flatten().numpy()
    counts, _ = np.histogram(np.log10(magnitudes), bins=HISTOGRAM_EDGES)
    bias = np.histogram(np.log10(model[4].bias.grad.abs().numpy()), bins=HISTOGRAM_EDGES)[0]
    assert m.histograms[2, 1:].tolist() == (counts + bias).tolist()


def test_magnitudes_are_mean_and_max_absolute_gradient(model):
    mean, peak = GradientStatistics(find_layers(model)).magnitudes()
    grads = [torch.cat([p.grad.flatten() for p in model[i].parameters()]).abs() for i in (0, 2, 4)]
    assert mean == pytest.approx([float(g.mean()) for g in grads], rel=1e-5)
    assert peak == pytest.approx([float(g.max()) for g in grads], rel=1e-6)


def test_bf16_parameters_are_measured_in_float32():
    model = nn.Linear(4, 4).to(torch.bfloat16)
    model(torch.randn(2, 4, dtype=torch.bfloat16)).sum().backward()
    m = GradientStatistics(find_layers(model)).measure()
    assert m.grad_norm.dtype == np.float64
    assert m.grad_norm[0] == pytest.approx(layer_norm([p.grad for p in model.parameters()]), rel=1e-2)
