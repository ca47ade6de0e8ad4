from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradwatch.health.activations import (
    SATURATING,
    ActivationSampler,
    Kind,
    activation_kind,
    find_activations,
    unit_dims,
)


def sample(model: nn.Module, *inputs: torch.Tensor, **patterns: list[str]) -> dict[str, float]:
    sampler = ActivationSampler(**patterns)
    sampler.attach(model)
    for x in inputs:
        model(x)
    sampler.detach()
    return sampler.read()


def linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


@pytest.mark.parametrize("inplace", [False, True])
def test_dead_fraction_counts_units_never_positive(inplace: bool) -> None:
    # Small weights and biases of ±10: the units with a negative bias are <= 0 on every sample.
    torch.manual_seed(0)
    bias = torch.tensor([10.0, -10.0, 10.0, -10.0, 10.0, -10.0])
    model = nn.Sequential(linear(0.1 * torch.randn(6, 4), bias), nn.ReLU(inplace=inplace))
    metrics = sample(model, torch.randn(32, 4))
    assert metrics["act/dead/1"] == 0.5


def test_dead_unit_is_one_that_is_off_for_every_sample() -> None:
    # Unit 0 fires for one sample out of four: alive. Unit 1 never fires: dead.
    model = nn.Sequential(linear(torch.tensor([[1.0], [0.0]]), torch.tensor([0.0, 0.0])), nn.ReLU())
    metrics = sample(model, torch.tensor([[-1.0], [-2.0], [3.0], [-4.0]]))
    assert metrics["act/dead/1"] == 0.5


@pytest.mark.parametrize(
    ("shape", "dead_dim"),
    [((4, 6), 1), ((4, 6, 5, 5), 1), ((4, 6, 5, 5, 5), 1), ((4, 5, 6), 2), ((6,), 0)],
)
def test_units_are_channels_or_features(shape: tuple[int, ...], dead_dim: int) -> None:
    # Every unit positive somewhere, except the first two along the unit dim.
    x = torch.rand(shape) + 0.1
    x.narrow(dead_dim, 0, 2).neg_()
    assert unit_dims(len(shape)) == tuple(d for d in range(len(shape)) if d != dead_dim)
    assert sample(nn.ReLU(), x)["act/dead/<root>"] == pytest.approx(2 / 6)


@pytest.mark.parametrize("cls", list(SATURATING))
def test_saturated_fraction_is_the_flat_part(cls: type[nn.Module]) -> None:
    # Two of four inputs lie deep in the flat tails, two at 0 where the slope is largest.
    metrics = sample(cls(), torch.tensor([[-10.0, 0.0, 0.0, 10.0]]))
    assert metrics["act/saturated/<root>"] == 0.5


def test_saturated_fraction_uses_five_percent_of_the_largest_derivative() -> None:
    limit = math.atanh(math.sqrt(0.95))  # tanh' = 1 - tanh² = 0.05 here
    metrics = sample(nn.Tanh(), torch.tensor([limit - 0.01, limit + 0.01, -limit - 0.01, 0.0]))
    assert metrics["act/saturated/<root>"] == 0.5
    assert sample(nn.Sigmoid(), torch.full((8, 3), 100.0))["act/saturated/<root>"] == 1.0
    assert sample(nn.Sigmoid(), torch.zeros(8, 3))["act/saturated/<root>"] == 0.0


def test_hardtanh_saturates_at_its_own_bounds() -> None:
    metrics = sample(nn.Hardtanh(-2.0, 2.0), torch.tensor([-3.0, -1.5, 1.5, 2.0]))
    assert metrics["act/saturated/<root>"] == 0.5


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.Tanh(), nn.Softplus()])
def test_mean_and_std_match_torch(act: nn.Module) -> None:
    torch.manual_seed(0)
    x = 3 * torch.randn(16, 8, 5) + 1
    y = act(x)
    metrics = sample(act, x)
    assert metrics["act/mean/<root>"] == pytest.approx(y.mean().item(), rel=1e-5)
    assert metrics["act/std/<root>"] == pytest.approx(y.std(correction=0).item(), rel=1e-5)


def test_bf16_outputs_are_accumulated_in_float32() -> None:
    torch.manual_seed(0)
    x = (torch.randn(64, 256) + 100).bfloat16()  # a float32 mean of many values near 100
    y = nn.ReLU()(x).float()
    metrics = sample(nn.ReLU(), x)
    assert metrics["act/mean/<root>"] == pytest.approx(y.mean().item(), rel=1e-6)
    assert metrics["act/std/<root>"] == pytest.approx(y.std(correction=0).item(), rel=1e-4)


def test_a_layer_called_several_times_pools_its_outputs() -> None:
    torch.manual_seed(0)
    relu = nn.ReLU()
    first, second = torch.randn(8, 4), 2 * torch.randn(24, 4) + 1
    first[:, :2] = -1.0  # two of four units dead on the first call, none on the second
    metrics = sample(relu, first, second)
    pooled = relu(torch.cat([first, second]))
    assert metrics["act/mean/<root>"] == pytest.approx(pooled.mean().item(), rel=1e-5)
    assert metrics["act/std/<root>"] == pytest.approx(pooled.std(correction=0).item(), rel=1e-5)
    assert metrics["act/dead/<root>"] == pytest.approx(2 / 8)  # per call: 2 of 4 units, then 0 of 4


def test_kinds_and_keys() -> None:
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.ReLU6(),  # a Hardtanh subclass, but a rectifier
        nn.Identity(),
        nn.Softplus(),
        nn.Sigmoid(),
        nn.Dropout(0.0),
    )
    assert [(a.name, a.kind) for a in find_activations(model)] == [
        ("1", Kind.RECTIFIER),
        ("3", Kind.SMOOTH),
        ("4", Kind.SATURATING),
    ]
    assert set(sample(model, torch.randn(2, 3))) == {
        "act/dead/1",
        "act/mean/1",
        "act/std/1",
        "act/mean/3",
        "act/std/3",
        "act/saturated/4",
        "act/mean/4",
        "act/std/4",
    }
    assert activation_kind(nn.Identity()) is None


def test_include_and_exclude_patterns_on_layer_names() -> None:
    model = nn.ModuleDict({"a": nn.Sequential(nn.ReLU(), nn.Tanh()), "b": nn.Sequential(nn.ReLU())})
    names = [a.name for a in find_activations(model, include=["a.*"], exclude=["*.1"])]
    assert names == ["a.0"]
    with pytest.raises(ValueError, match="non-empty"):
        ActivationSampler(include=[""])


def test_compiled_submodules_keep_their_names() -> None:
    model = nn.Sequential(nn.Linear(2, 2), torch.compile(nn.Sequential(nn.ReLU()), backend="eager"))
    assert [a.name for a in find_activations(model)] == ["1.0"]


def test_hooks_exist_only_while_attached() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Tanh())
    sampler = ActivationSampler()
    assert [a.name for a in sampler.attach(model)] == ["1", "2"]
    assert sampler.attached
    assert all(len(m._forward_hooks) == 1 for m in model[1:])
    with pytest.raises(RuntimeError, match="already attached"):
        sampler.attach(model)
    sampler.detach()
    assert not sampler.attached
    assert all(not m._forward_hooks for m in model)
    sampler.detach()  # a no-op
    model(torch.randn(3, 2))
    assert sampler.read() == {}  # nothing was recorded before attach or after detach


def test_read_forgets_and_attach_starts_a_new_window() -> None:
    model = nn.ReLU()
    sampler = ActivationSampler()
    sampler.attach(model)
    model(torch.ones(2, 2))
    assert sampler.read()["act/mean/<root>"] == 1.0
    assert sampler.read() == {}
    model(-torch.ones(2, 2))
    sampler.detach()
    sampler.attach(model)  # drops the -1s
    model(torch.full((2, 2), 3.0))
    sampler.detach()
    assert sampler.read()["act/mean/<root>"] == 3.0


def test_hooks_never_sync_with_the_host() -> None:
    # Meta tensors have no data: `.item()`, `.tolist()` or boolean indexing in a hook would raise.
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.Sigmoid(), nn.Softplus()).to("meta")
    sampler = ActivationSampler()
    sampler.attach(model)
    model(torch.randn(16, 4, device="meta"))
    sampler.detach()
    assert len(sampler._calls) == 3
    assert all(call.values.device.type == "meta" for call in sampler._calls)


def test_under_torch_compile_sampling_adds_no_graph_break() -> None:
    # Dynamo ignores hooks added after it compiled unless told to guard on them; with the guards the compiled code
    # switches between a graph with hooks and one without, and the hooks trace into the graph (fullgraph=True).
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), nn.Tanh())
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    sampler = ActivationSampler()
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        for step in range(5):
            x = torch.randn(16, 4)
            if step % 2 == 1:
                compiled(x)
                continue
            sampler.attach(compiled)
            compiled(x)
            sampler.detach()
            assert sampler.read() == sample(model, x)
    assert not counters["graph_break"]
    assert counters["stats"]["unique_graphs"] <= 2
    torch._dynamo.reset()
