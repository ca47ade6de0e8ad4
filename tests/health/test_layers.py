"""Layers in forward order, read off the autograd graph; include / exclude / grouping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradwatch.health import find_layers, forward_order
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


def test_without_an_order_layers_keep_registration_order():
    assert names(find_layers(Declared())) == [ROOT, "head", "early", "mid"]


@pytest.mark.parametrize("backend", [None, "eager", "aot_eager"])
def test_forward_order_also_under_torch_compile(backend):
    model = Declared()
    run = model if backend is None else torch.compile(model, backend=backend)
    order = forward_order(run(torch.randn(3, 4)).sum())
    assert names(find_layers(model, order=order)) == ["early", "mid", "head", ROOT]


class AutoEncoder(nn.Module):
    """Lightning's autoencoder shape: encoder then decoder, each Linear / ReLU / Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        self.decoder = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 8))

    def forward(self, x):
        return self.decoder(self.encoder(x))


@pytest.mark.parametrize("compiled", ["none", "encoder", "decoder", "whole"])
def test_a_compiled_submodule_keeps_its_place(compiled):
    # Depth in the graph is not forward order once a region is one node: a compiled encoder's parameters sat at the
    # same depth as the decoder's first weight (behind a transpose node), and the order came out interleaved.
    model = AutoEncoder()
    run = model
    if compiled == "whole":
        run = torch.compile(model, backend="aot_eager")
    elif compiled != "none":
        setattr(model, compiled, torch.compile(getattr(model, compiled), backend="aot_eager"))
    x = torch.randn(5, 8)
    order = forward_order((run(x) - x).pow(2).mean())
    assert names(find_layers(model, order=order)) == ["encoder.0", "encoder.2", "decoder.0", "decoder.2"]


def test_a_residual_network_orders_blocks_by_first_use():
    blocks = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    x = torch.randn(2, 4)
    for block in reversed(blocks):  # run in the reverse of registration
        x = x + block(x)  # every block also has a one-node path to the loss through the skips
    order = names(find_layers(blocks, order=forward_order(x.sum())))
    assert order == ["2", "1", "0"]


def test_tied_weights_belong_to_their_first_module_and_count_once():
    embedding, head = nn.Embedding(10, 4), nn.Linear(4, 10)
    head.weight = embedding.weight
    model = nn.ModuleDict({"embedding": embedding, "head": head})
    layers = {layer.name: layer.params for layer in find_layers(model)}
    assert layers == {"embedding": (embedding.weight,), "head": (head.bias,)}


def test_layers_absent_from_the_read_pass_follow_the_layer_registered_before_them():
    # Fine-tuning: the pass that was read ran with the backbone frozen; once unfrozen, its layers go before the
    # head, where the model registers them, not after every known layer.
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))
    for p in [*model[0].parameters(), *model[1].parameters()]:
        p.requires_grad_(False)
    order = forward_order(model(torch.randn(2, 4)).sum())
    assert set(order) == {id(p) for p in model[2].parameters()}
    assert names(find_layers(model, order=order)) == ["0", "1", "2"]


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


def test_forward_order_of_a_tensor_without_graph_is_empty():
    assert forward_order(torch.ones(2)) == {}


def test_a_parametrized_layer_is_one_layer_with_its_weight_and_bias():
    # Spectral norm moves the weight into `head.parametrizations.weight.original`; the bias stays on `head`. Under
    # the WGAN loss the bias's gradient is exactly zero, so alone it would look like a vanishing layer.
    model = nn.Sequential(nn.Linear(4, 8), nn.utils.parametrizations.spectral_norm(nn.Linear(8, 1)))
    layers = {layer.name: layer for layer in find_layers(model)}
    assert sorted(layers) == ["0", "1"]
    head = model[1]
    assert {id(p) for p in layers["1"].params} == {id(head.bias), id(head.parametrizations.weight.original)}
