"""LightningModules whose architecture choices are sweep axes."""

from gradwatch.models.base import GradwatchModule
from gradwatch.models.cnn import CNN, ConvBackbone, TorchvisionBackbone
from gradwatch.models.rnn import RNN
from gradwatch.models.supervised import SupervisedModule

__all__ = ["CNN", "RNN", "ConvBackbone", "GradwatchModule", "SupervisedModule", "TorchvisionBackbone"]
