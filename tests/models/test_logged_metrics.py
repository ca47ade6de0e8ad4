"""``logged_metrics()`` names exactly the keys a model logs: sweeps check ``metric.name`` against it."""

from __future__ import annotations

import pytest

from conftest import make_trainer, read_metrics
from gradwatch import CNN, GAN, RNN, AddingProblemDataModule, DigitsDataModule


@pytest.mark.parametrize(
    ("make_model", "make_data"),
    [
        (lambda: CNN(depth=1, width=8), lambda: DigitsDataModule(batch_size=64)),
        (lambda: RNN(cell="gru", hidden_size=8), lambda: AddingProblemDataModule(seq_len=10, num_train=128,
                                                                                  num_val=64, num_test=64)),
        (lambda: GAN(g_width=8, d_width=8, latent_dim=8), lambda: DigitsDataModule(batch_size=64)),
        (lambda: GAN(g_width=8, d_width=8, latent_dim=8, loss="wgan-gp", d_norm="none"),
         lambda: DigitsDataModule(batch_size=64)),
    ],
    ids=["cnn", "rnn-regression", "gan", "gan-wgan-gp"],
)  # fmt: skip
def test_logged_metrics_match_the_csv(tmp_path, make_model, make_data):
    model, data = make_model(), make_data()
    trainer = make_trainer(
        tmp_path, max_steps=-1, max_epochs=1, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1
    )
    trainer.fit(model, data)
    if not isinstance(model, GAN):
        trainer.test(model, data)
    rows = read_metrics(tmp_path / "csv" / "metrics.csv")
    logged = {key for key in rows.columns if rows.values(key)}
    declared = set(model.logged_metrics())
    assert logged <= declared, f"logged but not declared: {logged - declared}"
    assert declared <= logged, f"declared but never logged: {declared - logged}"
