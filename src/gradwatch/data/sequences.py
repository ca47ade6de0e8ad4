"""Sequence DataModules: tasks whose answer depends on inputs far back in time."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from typing_extensions import override

from gradwatch.data.augment import to_unit_range
from gradwatch.data.base import SplitDataModule, check_held_out
from gradwatch.errors import ConfigError, check_positive, unknown_choice

if TYPE_CHECKING:
    from gradwatch.data.images import DigitsDataModule

#: What a sequence DataModule's targets are; the RNN picks its head and loss by it.
Task = Literal["classification", "regression"]


class SequenceDataModule(SplitDataModule):
    """Base of the sequence DataModules: batch-first ``(x, y)`` with ``x`` float ``(N, T, input_size)``.

    Models (:class:`~gradwatch.RNN`) read four attributes before training, so subclasses set them as class
    attributes, or in ``__init__`` where they depend on the arguments:

    - ``input_size``: features per time step.
    - ``num_outputs``: classes (classification) or values (regression) predicted per target step.
    - ``task``: ``classification`` (``y`` long class indices) or ``regression`` (``y`` float).
    - ``output_steps``: how many final time steps carry targets. With 1, ``y`` is ``(N,)`` (classification) or
      ``(N, num_outputs)`` (regression); with ``k > 1``, ``y`` is ``(N, k)`` and the model answers at each of the
      last ``k`` steps.
    """

    input_size: int
    num_outputs: int
    task: Task
    output_steps: int = 1

    @property
    def chance_loss(self) -> float | None:
        """The loss of a model that learned nothing (the ``stalled`` verdict's scale).

        ``ln(num_outputs)`` for a classification; a regression says its own (its targets' variance), else ``None``.
        """
        return math.log(self.num_outputs) if self.task == "classification" else None


class GeneratedSequenceDataModule(SequenceDataModule):
    """Base of the synthetic tasks: each split drawn from its own seeded stream by :meth:`generate_split`.

    Args:
        num_train: Training sequences.
        num_val: Validation sequences.
        num_test: Test sequences.
        batch_size: Sequences per batch.
        seed: Seeds the data (each split its own stream) and the shuffling.
        num_workers: DataLoader worker processes.

    """

    def __init__(
        self,
        num_train: int = 4096,
        num_val: int = 512,
        num_test: int = 512,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive(name, num_train=num_train, num_val=num_val, num_test=num_test)
        self.check_loader_args(name, batch_size, num_workers)
        self.save_hyperparameters()

    def generate_split(self, n: int, generator: torch.Generator) -> TensorDataset:
        """``n`` sequences and their targets, drawn from ``generator``."""
        raise NotImplementedError

    def make_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        """The three splits, each from its own seeded stream: changing one size leaves the others alone."""
        hp = self.hparams
        sizes = (hp.num_train, hp.num_val, hp.num_test)
        return tuple(  # type: ignore[return-value]
            self.generate_split(n, torch.Generator().manual_seed(hp.seed * len(sizes) + i)) for i, n in enumerate(sizes)
        )


class AddingProblemDataModule(GeneratedSequenceDataModule):
    """Hochreiter & Schmidhuber's adding problem, generated from a seed (no files).

    Each step carries ``(value, marker)``: values are uniform in ``[0, 1]``, and two markers, one in each half of
    the sequence, flag the values whose sum is the target. Predicting the mean (1.0) scores an MSE of about
    0.167; beating it means gradients reached back ``seq_len / 2`` steps or more.

    Args:
        seq_len: Steps per sequence, the distance gradients must travel.
        **kwargs: :class:`GeneratedSequenceDataModule`'s arguments (``num_train``, ``batch_size``, ``seed``, ...).

    Example::

        >>> dm = AddingProblemDataModule(seq_len=20)
        >>> dm.setup("fit")
        >>> x, y = dm.train_set[0]
        >>> x.shape, y.shape
        (torch.Size([20, 2]), torch.Size([1]))

    """

    input_size = 2
    num_outputs = 1
    task: Literal["regression"] = "regression"
    #: The MSE of always answering the mean: the variance of the sum of two U(0, 1) values, 1/6.
    chance_loss = 1 / 6

    def __init__(self, seq_len: int = 50, **kwargs: Any) -> None:
        if seq_len < 2:
            raise ConfigError(
                f"{type(self).__name__}: seq_len must be >= 2 (one marker per half), got {seq_len}", param="seq_len"
            )
        super().__init__(**kwargs)

    @staticmethod
    def generate(n: int, seq_len: int, generator: torch.Generator) -> TensorDataset:
        """``n`` sequences ``(seq_len, 2)`` with targets ``(1,)``."""
        values = torch.rand(n, seq_len, generator=generator)
        half = seq_len // 2
        first = torch.randint(0, half, (n,), generator=generator)
        second = torch.randint(half, seq_len, (n,), generator=generator)
        markers = torch.zeros(n, seq_len)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        targets = (values * markers).sum(dim=1, keepdim=True)
        return TensorDataset(torch.stack([values, markers], dim=-1), targets)

    @override
    def generate_split(self, n: int, generator: torch.Generator) -> TensorDataset:
        return self.generate(n, self.hparams.seq_len, generator)


class CopyMemoryDataModule(GeneratedSequenceDataModule):
    """The copy-memory task (Arjovsky, Shah & Bengio 2016): recall ``copy_length`` symbols after ``delay`` steps.

    Each sequence is one-hot over ``alphabet + 2`` tokens (the symbols ``0 .. alphabet - 1``, then blank, then
    delimiter): ``copy_length`` random symbols, ``delay - 1`` blanks, the delimiter, and ``copy_length`` blanks
    during which the model must repeat the symbols in order; ``delay + 2 * copy_length`` steps in all. The targets
    are the symbols, answered at the last ``copy_length`` steps (``output_steps``), so gradients must carry each
    one back ``delay + copy_length`` steps.

    Chance level: the symbols are uniform and independent, so a model that has forgotten them scores at best a
    cross-entropy of ``ln(alphabet)`` (2.08 for 8 symbols) and a per-symbol accuracy of ``1 / alphabet``.

    Args:
        delay: Steps from the last symbol to the delimiter that asks for them; the memory span is
            ``delay + copy_length``.
        copy_length: Symbols to remember and repeat.
        alphabet: Distinct symbols (classes), at least 2.
        **kwargs: :class:`GeneratedSequenceDataModule`'s arguments (``num_train``, ``batch_size``, ``seed``, ...).

    Raises:
        ConfigError: a bad value; the message names it.

    Example::

        >>> dm = CopyMemoryDataModule(delay=20, copy_length=5, alphabet=4)
        >>> dm.input_size, dm.num_outputs, dm.output_steps
        (6, 4, 5)
        >>> dm.setup("fit")
        >>> x, y = dm.train_set[0]
        >>> x.shape, y.shape
        (torch.Size([30, 6]), torch.Size([5]))

    """

    task: Literal["classification"] = "classification"

    def __init__(self, delay: int = 50, copy_length: int = 10, alphabet: int = 8, **kwargs: Any) -> None:
        name = type(self).__name__
        check_positive(name, delay=delay, copy_length=copy_length)
        if alphabet < 2:
            raise ConfigError(f"{name}: alphabet must be >= 2 symbols, got {alphabet}", param="alphabet")
        super().__init__(**kwargs)
        self.input_size = alphabet + 2
        self.num_outputs = alphabet
        self.output_steps = copy_length

    @staticmethod
    def generate(n: int, delay: int, copy_length: int, alphabet: int, generator: torch.Generator) -> TensorDataset:
        """``n`` one-hot sequences ``(delay + 2 * copy_length, alphabet + 2)`` with targets ``(copy_length,)``."""
        blank, delimiter = alphabet, alphabet + 1
        symbols = torch.randint(0, alphabet, (n, copy_length), generator=generator)
        tokens = torch.full((n, delay + 2 * copy_length), blank)
        tokens[:, :copy_length] = symbols
        tokens[:, copy_length + delay - 1] = delimiter
        return TensorDataset(F.one_hot(tokens, alphabet + 2).float(), symbols)

    @override
    def generate_split(self, n: int, generator: torch.Generator) -> TensorDataset:
        hp = self.hparams
        return self.generate(n, hp.delay, hp.copy_length, hp.alphabet, generator)


#: How :class:`SequentialDigitsDataModule` reads an image: one pixel per step, or one row per step.
DIGIT_ORDERS = ("pixel", "row")


class SequentialDigitsDataModule(SequenceDataModule):
    """scikit-learn's digits read as sequences: sequential (and permuted) MNIST on real data, without a download.

    ``order="pixel"`` feeds one pixel per step in raster order, ``image_size ** 2`` steps of 1 feature (the
    sequential-MNIST setting, Le et al. 2015); ``order="row"`` feeds one row per step, ``image_size`` steps of
    ``image_size`` features. ``image_size`` therefore sweeps the sequence length (8 → 64 pixel steps, 28 → 784).
    ``permute`` shuffles the time steps with one fixed permutation drawn from ``seed`` (permuted sequential MNIST),
    which spreads each stroke's pixels over the whole sequence. Pixels are in ``[-1, 1]``; one label per image,
    answered at the last step. ``seq_len`` holds the number of steps.

    Loading, resizing and splitting are :class:`~gradwatch.DigitsDataModule`'s: the same ``seed`` and splits hold
    out the same images.

    Args:
        order: ``pixel`` or ``row``.
        image_size: Side the 8×8 digits are resized to.
        permute: Apply the fixed seeded permutation to the time steps.
        val_split: Validation share of the data: a fraction in ``(0, 1)`` or a count.
        test_split: Test share of the data: a fraction in ``(0, 1)`` or a count.
        batch_size: Sequences per batch.
        seed: Seeds the splits, the permutation and the shuffling.
        num_workers: DataLoader worker processes.

    Raises:
        ConfigError: a bad value; the message names it and, for ``order``, lists the valid ones.

    Example::

        >>> dm = SequentialDigitsDataModule(order="row", image_size=12)
        >>> dm.input_size, dm.num_outputs
        (12, 10)
        >>> dm.setup("fit")
        >>> x, y = dm.train_set[0]
        >>> x.shape, y.shape
        (torch.Size([12, 12]), torch.Size([]))

    """

    num_outputs = 10
    task: Literal["classification"] = "classification"

    def __init__(
        self,
        order: str = "pixel",
        image_size: int = 8,
        permute: bool = False,
        val_split: int | float = 0.15,
        test_split: int | float = 0.15,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if order not in DIGIT_ORDERS:
            raise ConfigError(f"{name}: {unknown_choice('order', order, DIGIT_ORDERS)}", param="order")
        check_positive(name, image_size=image_size)
        check_held_out(name, val_split=val_split, test_split=test_split)
        self.check_loader_args(name, batch_size, num_workers)
        self.save_hyperparameters()
        self.input_size = 1 if order == "pixel" else image_size
        self.seq_len = image_size**2 if order == "pixel" else image_size
        self.digits = self._digits()

    def _digits(self) -> DigitsDataModule:
        # Built here rather than in `__init__`: Lightning's `save_hyperparameters` walks up the `__init__` frames
        # and would record this DataModule's arguments (order, permute) as the DigitsDataModule's too.
        from gradwatch.data.images import DigitsDataModule

        hp = self.hparams
        return DigitsDataModule(
            image_size=hp.image_size,
            val_split=hp.val_split,
            test_split=hp.test_split,
            batch_size=hp.batch_size,
            seed=hp.seed,
            num_workers=hp.num_workers,
        )

    def permutation(self) -> torch.Tensor | None:
        """The time-step order ``permute`` applies (the same for the same ``seed`` and length), or ``None``."""
        if not self.hparams.permute:
            return None
        return torch.randperm(self.seq_len, generator=torch.Generator().manual_seed(self.hparams.seed))

    def to_sequences(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images ``(N, H, W, 1)`` as float sequences ``(N, seq_len, input_size)`` in ``[-1, 1]``."""
        x = to_unit_range(images)
        x = x.reshape(len(x), self.seq_len, self.input_size)  # raster order: row by row, pixel by pixel
        order = self.permutation()
        return x if order is None else x[:, order]

    def make_splits(self) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
        """:class:`~gradwatch.DigitsDataModule`'s splits, as sequences."""
        return tuple(  # type: ignore[return-value]
            TensorDataset(self.to_sequences(torch.from_numpy(split.images)), split.labels)
            for split in self.digits.make_splits()
        )
