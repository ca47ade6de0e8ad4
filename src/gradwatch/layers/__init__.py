"""Pure-torch building blocks and the registries behind the sweep axes (no Lightning import)."""

from gradwatch.layers.activations import ACTIVATIONS, activation_gain, get_act_layer, register_activation
from gradwatch.layers.blocks import CELLS, RECURRENT_NORMS, ConvBlock, ElmanRNN, RecurrentBlock, RecurrentStack
from gradwatch.layers.init import INITS, init_weights, register_init
from gradwatch.layers.norms import NORMS, WEIGHT_NORMS, get_norm_layer, register_norm
from gradwatch.layers.registry import Registry
from gradwatch.layers.typing import LayerType

__all__ = [
    "ACTIVATIONS",
    "CELLS",
    "INITS",
    "NORMS",
    "RECURRENT_NORMS",
    "WEIGHT_NORMS",
    "ConvBlock",
    "ElmanRNN",
    "LayerType",
    "RecurrentBlock",
    "RecurrentStack",
    "Registry",
    "activation_gain",
    "get_act_layer",
    "get_norm_layer",
    "init_weights",
    "register_activation",
    "register_init",
    "register_norm",
]
