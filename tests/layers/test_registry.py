import functools

import pytest
from torch import nn

from gradwatch.errors import ConfigError
from gradwatch.layers import ACTIVATIONS, INITS, NORMS, Registry, get_act_layer, get_norm_layer, register_activation


def test_unknown_name_lists_valid_names_and_suggests_the_closest():
    with pytest.raises(ConfigError, match="unknown activation 'relux'") as info:
        get_act_layer("relux")
    message = str(info.value)
    assert all(name in message for name in ACTIVATIONS.names())
    assert "did you mean 'relu'" in message
    assert info.value.param == "activation"
    assert isinstance(info.value, ValueError)


def test_non_strings_pass_through_unchanged():
    partial = functools.partial(nn.LeakyReLU, negative_slope=0.2)
    assert get_act_layer(partial) is partial
    assert get_norm_layer(nn.BatchNorm2d) is nn.BatchNorm2d


def test_non_callable_is_refused():
    with pytest.raises(ConfigError, match="must be a name or a callable"):
        get_act_layer(3)


def test_duplicate_registration_is_refused():
    registry = Registry("thing", {"a": nn.ReLU})
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", nn.Tanh)


def test_user_registration_resolves_by_name():
    layer = functools.partial(nn.LeakyReLU, negative_slope=0.3)
    register_activation("leaky_relu_03", layer)
    try:
        assert get_act_layer("leaky_relu_03")().negative_slope == 0.3
        assert "leaky_relu_03" in ACTIVATIONS
    finally:
        ACTIVATIONS.unregister("leaky_relu_03")


def test_design_axes_are_registered():
    assert ACTIVATIONS.names() == [
        "relu", "leaky_relu", "elu", "selu", "gelu", "silu", "tanh", "sigmoid", "softplus", "identity",
    ]  # fmt: skip
    assert NORMS.names() == ["none", "batch", "layer", "group", "instance"]
    assert INITS.names() == ["default", "kaiming", "xavier", "orthogonal", "normal"]


def test_dotted_import_path_resolves_any_callable():
    assert get_act_layer("torch.nn.Mish") is nn.Mish
    assert get_norm_layer("torch.nn.BatchNorm2d") is nn.BatchNorm2d


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("torch.nn.Mishh", "activation 'torch.nn.Mishh' is neither registered .* nor importable"),
        ("nosuchpackage.Act", "nor importable: No module named 'nosuchpackage'"),
        ("math.pi", "activation 'math.pi' is not callable"),
    ],
)
def test_bad_import_path(path, match):
    with pytest.raises(ConfigError, match=match):
        get_act_layer(path)
