import math

import pytest
import torch
from torch import nn

from gradwatch.errors import ConfigError
from gradwatch.layers import INITS, activation_gain, init_weights, register_init
from gradwatch.layers.norms import NORMS


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(400, 300), nn.BatchNorm1d(300), nn.Conv2d(64, 32, 3))


def test_default_keeps_pytorch_initialization():
    torch.manual_seed(0)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_weights(net, "default")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_kaiming_std_is_gain_over_sqrt_fan_in():
    net = _net()
    init_weights(net, "kaiming", gain=math.sqrt(2))
    assert net[0].weight.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.02)
    assert net[2].weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.02)
    assert torch.count_nonzero(net[0].bias) == 0


def test_xavier_variance():
    net = _net()
    init_weights(net, "xavier", gain=1.0)
    assert net[0].weight.var().item() == pytest.approx(2 / (400 + 300), rel=0.03)


def test_orthogonal_rows_are_orthonormal_times_gain():
    net = nn.Linear(50, 40)
    init_weights(net, "orthogonal", gain=2.0)
    w = net.weight
    torch.testing.assert_close(w @ w.T, 4.0 * torch.eye(40), atol=1e-4, rtol=1e-4)


def test_normal_is_dcgan_and_draws_norm_scales_around_one():
    net = _net()
    init_weights(net, "normal", gain=5.0)  # DCGAN's scheme ignores the gain
    assert net[0].weight.std().item() == pytest.approx(0.02, rel=0.03)
    assert net[1].weight.mean().item() == pytest.approx(1.0, abs=0.01)
    assert 0.01 < net[1].weight.std().item() < 0.03


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_gates_are_initialized_one_by_one(cell):
    rnn = cell(8, 16, batch_first=True, bidirectional=True)
    init_weights(rnn, "orthogonal", gain=1.0)
    for name in ("weight_hh_l0", "weight_hh_l0_reverse"):
        for gate in getattr(rnn, name).chunk(getattr(rnn, name).shape[0] // 16):
            torch.testing.assert_close(gate @ gate.T, torch.eye(16), atol=1e-4, rtol=1e-4)
    assert all(torch.count_nonzero(p) == 0 for n, p in rnn.named_parameters() if n.startswith("bias"))


def test_spectral_normed_layers_initialize_the_trainable_weight():
    conv = nn.utils.parametrizations.spectral_norm(nn.Conv2d(16, 16, 3))
    init_weights(conv, "normal")
    assert conv.parametrizations.weight.original.std().item() == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("norm", [n for n in NORMS.names() if n != "none"])
def test_feature_norms_start_as_identity_scale(norm):
    layer = NORMS.get(norm)(8)
    with torch.no_grad():
        layer.weight.fill_(3.0)
    init_weights(layer, "kaiming")
    assert torch.all(layer.weight == 1)
    assert torch.all(layer.bias == 0)


def test_user_scheme_by_name():
    def constant(weight: torch.Tensor, gain: float) -> None:
        nn.init.constant_(weight, gain)

    register_init("constant", constant)
    try:
        net = nn.Linear(3, 3)
        init_weights(net, "constant", gain=0.5)
        assert torch.all(net.weight == 0.5)
    finally:
        INITS.unregister("constant")


def test_unknown_scheme():
    with pytest.raises(ConfigError, match="unknown init 'he'; valid: default, kaiming, normal, orthogonal, xavier"):
        init_weights(nn.Linear(2, 2), "he")


@pytest.mark.parametrize(
    ("layer", "gain"),
    [
        (nn.ReLU, math.sqrt(2)),
        (nn.Tanh, 5 / 3),
        (nn.Sigmoid, 1.0),
        (nn.Identity, 1.0),
        (nn.SELU, 0.75),
        (nn.GELU, math.sqrt(2)),
    ],
)
def test_activation_gain(layer, gain):
    assert activation_gain(layer) == pytest.approx(gain)
