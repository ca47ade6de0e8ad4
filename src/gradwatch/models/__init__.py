"""LightningModules whose architecture choices are sweep axes."""

from gradwatch.models.base import GradwatchModule
from gradwatch.models.cnn import CNN, ConvBackbone, TorchvisionBackbone
from gradwatch.models.gan import GAN, Discriminator, GANAdam, Generator
from gradwatch.models.rnn import RNN
from gradwatch.models.supervised import SupervisedModule

__all__ = [
    "CNN",
    "GAN",
    "RNN",
    "ConvBackbone",
    "Discriminator",
    "GANAdam",
    "Generator",
    "GradwatchModule",
    "SupervisedModule",
    "TorchvisionBackbone",
]
