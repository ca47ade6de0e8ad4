"""The detector's verdicts on scripted measurements, and the advice drawn from a model's configuration."""

from __future__ import annotations

import numpy as np
import pytest

from gradwatch.health import HealthDetector, Measurement, StallDetector, Verdict, advise

NAMES = ("stem", "blocks.0", "blocks.1", "head")


def measure(*norms: float, nonfinite=None) -> Measurement:
    return Measurement(
        NAMES,
        np.array(norms, dtype=float),
        np.ones(4),
        nonfinite=None if nonfinite is None else np.array(nonfinite),
    )


def test_attenuation_names_the_layers_far_below_the_last():
    detector = HealthDetector(max_attenuation=4, patience=1)
    (finding,) = detector.update(measure(1e-9, 1e-6, 1e-2, 1.0))
    assert finding.verdict is Verdict.VANISHING
    assert finding.layers == ("stem", "blocks.0")
    assert finding.of == 4
    assert "10^-9.0 of the last's" in finding.evidence


def test_vanishing_needs_patience_measurements_in_a_row():
    detector = HealthDetector(patience=3)
    weak, healthy = measure(1e-9, 1e-3, 1e-1, 1.0), measure(0.5, 0.5, 0.5, 1.0)
    assert detector.update(weak) == []
    assert detector.update(weak) == []
    assert detector.update(healthy) == []  # the streak starts again
    assert detector.update(weak) == []
    assert detector.update(weak) == []
    assert [f.verdict for f in detector.update(weak)] == [Verdict.VANISHING]


def test_a_first_layer_with_exactly_zero_gradient_is_said_in_words():
    (finding,) = HealthDetector(patience=1).update(measure(0.0, 1e-3, 1e-2, 1.0))
    assert finding.layers == ("stem",)
    assert "first layer's gradient is exactly zero" in finding.evidence
    assert "inf" not in finding.describe()


def test_floor_catches_a_uniformly_tiny_gradient():
    (finding,) = HealthDetector(vanishing_norm=1e-8, patience=1).update(measure(1e-10, 1e-10, 1e-10, 1e-10))
    assert finding.layers == NAMES
    assert "under 1e-08" in finding.evidence


def test_ceiling_names_the_exploding_layers():
    (finding,) = HealthDetector(exploding_norm=1e3).update(measure(5e3, 2e3, 10.0, 1.0))
    assert finding.verdict is Verdict.EXPLODING
    assert finding.layers == ("stem", "blocks.0")


def test_nonfinite_names_exactly_its_layers_and_suspends_the_others():
    detector = HealthDetector(patience=1)
    (finding,) = detector.update(measure(1e-12, np.nan, 1.0, 1.0, nonfinite=[0, 3, 0, 0]))
    assert finding.verdict is Verdict.NONFINITE
    assert finding.layers == ("blocks.0",)
    assert finding.describe() == "non-finite gradients in 1 of 4 layers (blocks.0): 3 NaN/Inf gradient values"


def test_state_round_trips():
    detector = HealthDetector(patience=3)
    detector.update(measure(1e-9, 1e-3, 1e-1, 1.0))
    resumed = HealthDetector(patience=3)
    resumed.load_state_dict(detector.state_dict())
    resumed.update(measure(1e-9, 1e-3, 1e-1, 1.0))
    assert [f.verdict for f in resumed.update(measure(1e-9, 1e-3, 1e-1, 1.0))] == [Verdict.VANISHING]


@pytest.mark.parametrize("bad", [{"patience": 0}, {"max_growth": 0}, {"exploding_norm": -1.0}])
def test_bad_thresholds(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        HealthDetector(**bad)


def test_describe_shortens_long_layer_lists():
    (finding,) = HealthDetector(vanishing_norm=1.0, patience=1).update(measure(0.1, 0.1, 0.1, 0.1))
    assert finding.describe(shown=2).startswith("vanishing gradients in 4 of 4 layers (stem, blocks.0, … +2)")


@pytest.mark.parametrize(
    ("verdict", "config", "kwargs", "expected"),
    [
        (
            Verdict.VANISHING,
            {"cell": "rnn", "activation": "tanh", "depth": 3, "norm": "none", "residual": False},
            {},
            "likely cause: a vanilla rnn cell over long sequences; tanh × 3 layers without residual or norm;"
            " try cell=lstm / residual=true / norm=layer",
        ),
        (
            Verdict.VANISHING,
            {"g_activation": "torch.nn.Sigmoid", "g_depth": 4, "g_norm": "batch", "g_residual": False},
            {"prefix": "g_"},
            "likely cause: sigmoid × 4 blocks without residual; try g_activation=relu / g_residual=true",
        ),
        (
            Verdict.EXPLODING,
            {"norm": "none"},
            {"lr": 0.5},
            "likely cause: a learning rate too high for this network (lr=0.5); try lr=0.05 / gradient_clip_val=1.0"
            " / norm=batch",
        ),
        (
            Verdict.NONFINITE,
            {},
            {"lr": 1e-3, "clipping": True, "precision": "16-mixed"},
            "likely cause: a gradient that overflowed, or a NaN / Inf from the loss or the data; try lr=0.0001"
            " / precision=bf16-mixed",
        ),
        (
            Verdict.VANISHING,
            {},
            {},
            "likely cause: depth without skip connections, saturating activations or too small an initialization;"
            " try residual connections, normalization or a non-saturating activation",
        ),
        (
            Verdict.EXPLODING,
            {"norm": "none", "init": "normal", "activation": "relu"},
            {"lr": 0.5, "updates": 0},
            "likely cause: the initialization (init=normal): weights too large before any update; try init=kaiming"
            " / norm=batch",
        ),
        (
            Verdict.NONFINITE,
            {},
            {"lr": 0.5, "updates": 0},
            "likely cause: a NaN / Inf from the data or the loss, or initial weights that overflow (before any"
            " update); try a smaller initialization gain",
        ),
    ],
    ids=["rnn", "gan-generator", "exploding", "nonfinite-fp16", "unknown-model", "exploding-at-init", "nan-at-init"],
)
def test_advice_is_drawn_from_the_configuration(verdict, config, kwargs, expected):
    assert advise(verdict, config, **kwargs) == expected


# --- stalled: the loss stops falling while gradients flow --------------------------------------------------------

CHANCE = float(np.log(10))


def judge(losses, **kwargs) -> list[str | None]:
    """Measured every 10 steps from step 0, in windows of 30 steps."""
    detector = StallDetector(**{"span": 30, "chance": CHANCE, **kwargs})
    return [detector.update(10 * i, loss) for i, loss in enumerate(losses)]


def test_a_loss_that_stays_near_chance_stalls_once_two_windows_are_seen():
    said = judge([2.6, 2.31, 2.30, 2.31, 2.30, 2.29, 2.30])
    assert said[:6] == [None] * 6
    assert said[6] == "loss 2.297 (chance 2.303): down 0.01 over the last 30 steps"


@pytest.mark.parametrize(
    "losses",
    [
        [2.3, 1.2, 0.6, 0.3, 0.2, 0.15, 0.12, 0.11, 0.105, 0.1],  # converged: flat, but far below chance
        [2.3, 2.31, 2.30, 2.30, 2.0, 1.5, 1.0],  # a slow start that then learns
        [2.3, 2.3, 2.3, 2.3],  # two windows not seen yet: a stall is never called in the first steps
    ],
    ids=["converged", "slow start", "nan"],
)
def test_a_run_that_learns_or_has_learned_never_stalls(losses):
    assert judge(losses)[-1] is None


def test_without_a_chance_level_the_first_loss_is_the_scale():
    assert judge([5.0, 5.0, 5.0, 4.9, 4.9, 4.9, 4.9], chance=None)[-1] == (
        "loss 4.9 (first 5): down 0.067 over the last 30 steps"
    )
    assert judge([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4], chance=None)[-1] is None


def test_a_nan_loss_is_left_to_the_nonfinite_verdict():
    assert judge([2.3, 2.3, 2.3, 2.3, 2.3, 2.3, float("nan")])[-1] is None


def test_a_stall_detector_resumes_where_it_was():
    detector = StallDetector(span=20, chance=CHANCE)
    for step in (0, 10, 20, 30):
        detector.update(step, 2.3)
    again = StallDetector(span=20, chance=CHANCE)
    again.load_state_dict(detector.state_dict())
    assert again.update(40, 2.3) == detector.update(40, 2.3) is not None


STALLED = [
    (
        {"update_ratio": 10**-5.7},
        {},
        "a learning rate too small (lr=1e-06): each step moves the weights by 10^-5.7",
        "lr=0.0001",
    ),
    ({"update_ratio": 0.5}, {}, "a learning rate too large (lr=1e-06): the loss oscillates", "lr=1e-07"),
    ({"update_ratio": 1e-3, "spread": 0.4}, {}, "a learning rate too large", "lr=1e-07"),
    (
        {"update_ratio": 1e-3},
        {"activation": "sigmoid", "norm": "none", "residual": True, "depth": 8},
        "sigmoid units saturated",
        "activation=relu / norm=batch",
    ),
    (
        {"update_ratio": 1e-3, "attenuation": -0.5},
        {"activation": "relu", "norm": "batch", "residual": False, "depth": 34},
        "a plain network 34 blocks deep: deeper plain networks train worse even with healthy gradients",
        "residual=true",
    ),
    (
        {"update_ratio": 1e-3, "attenuation": -2.6},
        {"residual": False},
        "gradients 10^-2.6 weaker at the input",
        "residual=true",
    ),
    ({"update_ratio": 1e-3}, {}, "the optimization is stuck", "lr=1e-05"),
]


@pytest.mark.parametrize(("signals", "config", "cause", "fix"), STALLED, ids=[s[2][:30] for s in STALLED])
def test_a_stall_is_explained_by_what_was_measured_and_the_configuration(signals, config, cause, fix):
    said = advise(Verdict.STALLED, config, lr=1e-6, signals=signals)
    assert cause in said
    assert said.endswith(f"try {fix}") or f"try {fix} /" in said, said
    assert "vanishing" not in said
