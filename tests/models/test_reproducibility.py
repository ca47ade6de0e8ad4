"""The same seed gives the same losses, for every model family."""

import lightning.pytorch as pl
import pytest

from conftest import column, make_trainer, read_metrics
from gradwatch import CNN, GAN, RNN, AddingProblemDataModule, DigitsDataModule

FAMILIES = [
    (lambda: CNN(depth=2, width=8, residual=True), lambda: DigitsDataModule(batch_size=32), "train/loss"),
    (lambda: RNN(cell="gru", hidden_size=8), lambda: AddingProblemDataModule(seq_len=10, num_train=256), "train/loss"),
    (lambda: GAN(g_width=8, d_width=8, latent_dim=8), lambda: DigitsDataModule(batch_size=32), "train/d_loss"),
]


@pytest.mark.parametrize(("model", "datamodule", "key"), FAMILIES, ids=["CNN", "RNN", "GAN"])
def test_same_seed_same_losses_other_seed_other_losses(model, datamodule, key, tmp_path):
    def losses(run: str, seed: int) -> list[float]:
        pl.seed_everything(seed)
        make_trainer(tmp_path / run, max_steps=6).fit(model(), datamodule=datamodule())
        return column(read_metrics(tmp_path / run / "csv" / "metrics.csv"), key)

    first = losses("a", seed=3)
    assert len(first) >= 3
    assert losses("b", seed=3) == first
    assert losses("c", seed=4) != first
