import pytest
import torch
from torch import nn

from gradwatch.errors import ConfigError
from gradwatch.layers import ACTIVATIONS, NORMS, ConvBlock, ElmanRNN, RecurrentBlock, RecurrentStack, get_act_layer
from gradwatch.layers.norms import GroupNorm2d


@pytest.mark.parametrize("norm", NORMS.names())
@pytest.mark.parametrize("activation", ACTIVATIONS.names())
def test_conv_block_every_activation_and_norm(activation, norm):
    block = ConvBlock(3, 8, act_layer=ACTIVATIONS.get(activation), norm_layer=NORMS.get(norm), residual=True)
    out = block(torch.randn(4, 3, 8, 8))
    assert out.shape == (4, 8, 8, 8)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("stride", "upsample", "size"),
    [(1, False, 8), (2, False, 4), (1, True, 16)],
)
def test_conv_block_resamples_body_and_shortcut_alike(stride, upsample, size):
    block = ConvBlock(
        4, 6, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d, stride=stride, upsample=upsample, residual=True
    )
    assert block(torch.randn(2, 4, 8, 8)).shape == (2, 6, size, size)


def test_residual_identity_shortcut_adds_the_input_and_has_no_parameters():
    block = ConvBlock(4, 4, act_layer=nn.ReLU, norm_layer=nn.Identity, residual=True)
    assert not list(block.shortcut.parameters())
    x = torch.randn(2, 4, 5, 5)
    plain = block.act(block.norm(block.conv(x)))
    torch.testing.assert_close(block(x), x + plain)


def test_layer_names_do_not_depend_on_residual():
    names = {
        residual: {
            n
            for n, _ in ConvBlock(
                4, 4, act_layer=nn.ReLU, norm_layer=nn.BatchNorm2d, residual=residual
            ).named_parameters()
        }
        for residual in (False, True)
    }
    assert names[False] == names[True] == {"conv.weight", "norm.weight", "norm.bias"}


def test_weight_norm_is_applied_to_every_convolution():
    sn = nn.utils.parametrizations.spectral_norm
    block = ConvBlock(4, 8, act_layer=nn.ReLU, norm_layer=nn.Identity, stride=2, residual=True, weight_norm=sn)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    assert all(nn.utils.parametrize.is_parametrized(conv, "weight") for conv in convs)


@pytest.mark.parametrize(("channels", "groups"), [(64, 16), (16, 4), (8, 2), (4, 1), (3, 1), (256, 32)])
def test_group_norm_groups_hold_at_least_four_channels(channels, groups):
    assert GroupNorm2d(channels).num_groups == groups


def test_elman_rnn_matches_torch_rnn_with_tanh():
    torch.manual_seed(0)
    ours = ElmanRNN(3, 5, act_layer=nn.Tanh)
    theirs = nn.RNN(3, 5, batch_first=True)
    with torch.no_grad():
        theirs.weight_ih_l0.copy_(ours.ih.weight)
        theirs.bias_ih_l0.copy_(ours.ih.bias)
        theirs.weight_hh_l0.copy_(ours.hh.weight)
        theirs.bias_hh_l0.zero_()
    x = torch.randn(2, 7, 3)
    (out, last), (ref, ref_last) = ours(x), theirs(x)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(last, ref_last[0])


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    ("cell", "activation"), [("rnn", "tanh"), ("rnn", "relu"), ("rnn", "sigmoid"), ("lstm", "tanh"), ("gru", "tanh")]
)
def test_recurrent_stack_shapes(cell, activation, residual, bidirectional):
    stack = RecurrentStack(
        2,
        6,
        3,
        cell=cell,
        act_layer=get_act_layer(activation),
        norm="layer",
        residual=residual,
        bidirectional=bidirectional,
    )
    out = stack(torch.randn(4, 9, 2))
    assert out.shape == (4, 9, stack.num_features)
    assert stack.num_features == (12 if bidirectional else 6)
    assert torch.isfinite(out).all()


def test_recurrent_residual_adds_the_input():
    block = RecurrentBlock(4, 4, cell="gru", residual=True)
    x = torch.randn(2, 5, 4)
    torch.testing.assert_close(block(x), x + block.rnn(x)[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cell": "lstmx"}, "unknown cell 'lstmx'.*did you mean 'lstm'"),
        ({"norm": "batch"}, "norm for recurrent layers 'batch'; valid: layer, none"),
        ({"cell": "gru", "act_layer": nn.ReLU}, "vanilla cell only"),
    ],
)
def test_recurrent_block_bad_input(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RecurrentBlock(2, 4, **kwargs)
