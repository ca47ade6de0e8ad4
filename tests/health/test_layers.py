"""Layers in forward order, read off the autograd graph; include / exclude / grouping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch.health import find_layers, graph_depths
from gradwatch.health.layers import ROOT


class Declared(nn.Module):
    """Registration order (head, early, mid) is not forward order (early, mid, head)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.early = nn.Linear(4, 8)
        self.mid = nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.ones(1))  # owned by the root module

    def forward(self, x):
        return self.head(torch.tanh(self.mid(torch.tanh(self.early(x))))) * self.scale


def names(layers):
    return [layer.name for layer in layers]


def test_without_depths_layers_keep_registration_order():
    assert names(find_layers(Declared())) == [ROOT, "head", "early", "mid"]


@pytest.mark.parametrize("backend", [None, "eager", "aot_eager"])
def test_graph_depths_give_forward_order_also_under_torch_compile(backend):
    model = Declared()
    run = model if backend is None else torch.compile(model, backend=backend)
    depths = graph_depths(run(torch.randn(3, 4)).sum())
    assert names(find_layers(model, depths=depths))[:3] == ["early", "mid", "head"]


def test_a_residual_network_orders_blocks_by_their_longest_path():
    blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    x = torch.randn(2, 4)
    for block in blocks:
        x = x + block(x)  # every block also has a one-node path to the loss through the skips
    order = names(find_layers(blocks, depths=graph_depths(x.sum())))
    assert order == ["0", "1", "2"]


def test_only_the_given_parameters_are_watched():
    model = Declared()
    layers = find_layers(model, list(model.mid.parameters()) + list(model.head.parameters()))
    assert names(layers) == ["head", "mid"]
    assert layers[0].numel == 8 * 2 + 2


def test_include_exclude_and_group_depth():
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), nn.Sequential(nn.Linear(2, 2)))
    assert names(find_layers(model, include=["0.*"])) == ["0.0", "0.1"]
    assert names(find_layers(model, exclude=["*.1"])) == ["0.0", "1.0"]
    grouped = find_layers(model, group_depth=1)
    assert names(grouped) == ["0", "1"]
    assert len(grouped[0].params) == 4


def test_graph_depths_of_a_tensor_without_graph_is_empty():
    assert graph_depths(torch.ones(2)) == {}


def test_a_parametrized_layer_is_one_layer_with_its_weight_and_bias():
    # Spectral norm moves the weight into `head.parametrizations.weight.original`; the bias stays on `head`. Under
    # the WGAN loss the bias's gradient is exactly zero, so alone it would look like a vanishing layer.
    model = nn.Sequential(nn.Linear(4, 8), nn.utils.parametrizations.spectral_norm(nn.Linear(8, 1)))
    layers = {layer.name: layer for layer in find_layers(model)}
    assert sorted(layers) == ["0", "1"]
    head = model[1]
    assert {id(p) for p in layers["1"].params} == {id(head.bias), id(head.parametrizations.weight.original)}
