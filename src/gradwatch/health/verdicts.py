"""Verdicts on gradient health: vanishing, exploding, non-finite, each naming its layers; and stalled training.

``stalled`` is training whose loss stopped falling while its gradients flow (no other verdict stands).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from gradwatch.health.stats import Measurement


class Verdict(str, Enum):
    """What is wrong with the gradients (a ``str`` Enum: ``Verdict.VANISHING == "vanishing"``)."""

    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"
    STALLED = "stalled"


@dataclass(frozen=True)
class Finding:
    """A verdict, the layers it names (input side first) and what was measured.

    Attributes:
        verdict: The verdict.
        layers: The layers it concerns.
        evidence: What was measured, in words (``first layer's gradient is 1e-07 of the last's``).
        of: Layers measured, for "3 of 18 layers".
    """

    verdict: Verdict
    layers: tuple[str, ...]
    evidence: str
    of: int

    def describe(self, shown: int = 4) -> str:
        """One line: the verdict, how many layers and which (the first ``shown``), and the evidence."""
        if self.verdict is Verdict.STALLED:  # the whole network: its layers need no naming
            return f"training stalled: {self.evidence}"
        names = ", ".join(self.layers[:shown]) + (
            f", … +{len(self.layers) - shown}" if len(self.layers) > shown else ""
        )
        what = {
            Verdict.VANISHING: "vanishing gradients",
            Verdict.EXPLODING: "exploding gradients",
            Verdict.NONFINITE: "non-finite gradients",
        }[self.verdict]
        return f"{what} in {len(self.layers)} of {self.of} layers ({names}): {self.evidence}"


class HealthDetector:
    """Turns :class:`~gradwatch.health.stats.Measurement` s of one group of layers into :class:`Finding` s.

    - ``nonfinite``: a layer's gradient holds NaN or Inf. Decided at once.
    - ``exploding``: a layer's gradient norm is over ``exploding_norm``, or the total norm grew more than
      ``max_growth`` times since the previous measurement. Decided at once.
    - ``vanishing``: a layer's gradient norm is under ``vanishing_norm``, or the gradient is attenuated from the
      last layer to the first by more than ``max_attenuation`` orders of magnitude (layers that far below the
      last one are named). Decided when it holds for ``patience`` measurements in a row: gradients at
      initialization can be briefly small.

    A plain object with no Trainer: the callback feeds it (like Fabric's ``SpikeDetection``).

    Args:
        vanishing_norm: Floor on a layer's gradient norm.
        max_attenuation: Orders of magnitude (log10) the first layer's gradient may be below the last's.
        exploding_norm: Ceiling on a layer's gradient norm.
        max_growth: Largest growth factor of the total gradient norm between two measurements.
        patience: Measurements in a row a vanishing gradient must persist.

    Raises:
        ValueError: a threshold that is not positive, or ``patience < 1``.

    Example::

        >>> detector = HealthDetector(patience=1)
        >>> m = Measurement(("stem", "head"), np.array([1e-9, 1.0]), np.array([1.0, 1.0]))
        >>> [f.describe() for f in detector.update(m)]
        ["vanishing gradients in 1 of 2 layers (stem): first layer's gradient norm is 10^-9.0 of the last's"]
    """

    def __init__(
        self,
        *,
        vanishing_norm: float = 1e-8,
        max_attenuation: float = 4.0,
        exploding_norm: float = 1e3,
        max_growth: float = 100.0,
        patience: int = 3,
    ) -> None:
        for name, value in {
            "vanishing_norm": vanishing_norm,
            "max_attenuation": max_attenuation,
            "exploding_norm": exploding_norm,
            "max_growth": max_growth,
        }.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.vanishing_norm = vanishing_norm
        self.max_attenuation = max_attenuation
        self.exploding_norm = exploding_norm
        self.max_growth = max_growth
        self.patience = patience
        self.vanishing_streak = 0
        self.last_total: float | None = None

    def update(self, m: Measurement) -> list[Finding]:
        """The findings this measurement supports, given the ones before it."""
        names = np.array(m.names, dtype=object)
        measured = m.measured
        of = int(measured.sum())
        bad = m.nonfinite > 0
        if bad.any():  # the norms are meaningless this step; vanishing and exploding wait for finite gradients
            count = int(m.nonfinite.sum())
            return [Finding(Verdict.NONFINITE, tuple(names[bad]), f"{count} NaN/Inf gradient values", of)]
        findings = []
        vanishing = self._vanishing(m, measured, names, of)
        if vanishing is not None:
            findings.append(vanishing)
        exploding = self._exploding(m, measured, names, of)
        if exploding is not None:
            findings.append(exploding)
        return findings

    def _vanishing(self, m: Measurement, measured: np.ndarray, names: np.ndarray, of: int) -> Finding | None:
        norms = np.where(measured, m.grad_norm, np.inf)
        low = norms < self.vanishing_norm
        attenuation = m.attenuation
        evidence = f"gradient norm under {self.vanishing_norm:g}"
        if attenuation is not None and attenuation < -self.max_attenuation:
            last = m.grad_norm[measured][-1]
            low |= norms < last * 10.0**-self.max_attenuation
            evidence = (
                f"first layer's gradient norm is 10^{attenuation:.1f} of the last's"
                if np.isfinite(attenuation)
                else "first layer's gradient is exactly zero"
            )
        self.vanishing_streak = self.vanishing_streak + 1 if low.any() else 0
        if self.vanishing_streak < self.patience:
            return None
        if self.patience > 1:
            evidence += f" for {self.vanishing_streak} measurements"
        return Finding(Verdict.VANISHING, tuple(names[low]), evidence, of)

    def _exploding(self, m: Measurement, measured: np.ndarray, names: np.ndarray, of: int) -> Finding | None:
        total, previous = m.total_norm, self.last_total
        self.last_total = total
        high = measured & (np.nan_to_num(m.grad_norm) > self.exploding_norm)
        if high.any():
            peak = float(np.nanmax(m.grad_norm))
            return Finding(Verdict.EXPLODING, tuple(names[high]), f"gradient norm up to {peak:.3g}", of)
        if previous and total > self.max_growth * previous:
            # The layers carrying most of the grown norm: those holding 90% of its square, largest first.
            share = np.where(measured, np.nan_to_num(m.grad_norm) ** 2, 0.0)
            order = np.argsort(-share)
            top = order[: int(np.searchsorted(np.cumsum(share[order]), 0.9 * share.sum())) + 1]
            evidence = f"total gradient norm grew {total / previous:.3g}× since the last measurement ({total:.3g})"
            return Finding(Verdict.EXPLODING, tuple(names[np.sort(top)]), evidence, of)
        return None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to carry on counting."""
        return {"vanishing_streak": self.vanishing_streak, "last_total": self.last_total}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        self.vanishing_streak = int(state["vanishing_streak"])
        self.last_total = state["last_total"]


@dataclass
class StallDetector:
    """Calls ``stalled`` when the training loss stops falling while it is still far from solved.

    Fed the mean training loss between two measurements and the optimizer step it was measured at (:meth:`update`),
    it compares the mean loss of the last ``span`` steps with that of the ``span`` steps before. Training has stalled
    when

    - the loss fell by less than ``min_drop`` of its scale from one span to the next (the scale: the chance-level
      loss when known, else the first loss), and
    - it is still high: over ``1 - solved`` of the scale;

    so a run that converged and flattens out never stalls, and a slow start that then learns stops standing once
    the loss falls. Nothing is judged before two spans of steps were seen. Gradient verdicts take precedence: the
    tracker asks only while none stands.

    Args:
        span: Optimizer steps per window.
        min_drop: The fall, as a fraction of the scale, that counts as progress from one window to the next.
        solved: The fraction of the scale a run must have shed not to count as stuck.
        chance: The loss of a model that learned nothing (``ln(classes)`` for cross-entropy), if known.

    Example::

        >>> detector = StallDetector(span=20, chance=2.3026)
        >>> [detector.update(step, loss) for step, loss in ((0, 2.4), (10, 2.31), (20, 2.30), (30, 2.30), (40, 2.29))]
        [None, None, None, None, 'loss 2.295 (chance 2.303): down 0.01 over the last 20 steps']
    """

    span: int = 40
    min_drop: float = 0.1
    solved: float = 0.5
    chance: float | None = None
    start: tuple[int, float] | None = None
    points: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.span < 1:
            raise ValueError(f"stall_window must be >= 1, got {self.span}")

    def update(self, step: int, loss: float) -> str | None:
        """Add the mean training loss measured at ``step``; the evidence of a stall (in words), or ``None``."""
        if not np.isfinite(loss):
            return None  # a non-finite loss is the non-finite verdict's business
        self.start = (step, float(loss)) if self.start is None else self.start
        self.points = [(s, v) for s, v in self.points if s > step - 2 * self.span] + [(step, float(loss))]
        earlier, recent = self._windows()
        if self.start[0] > step - 2 * self.span or not earlier or not recent:
            return None
        before, now = float(np.mean(earlier)), float(np.mean(recent))
        scale = self.chance if self.chance else abs(self.start[1])
        if before - now >= self.min_drop * scale or now <= (1 - self.solved) * scale:
            return None
        against = f" (chance {self.chance:.4g})" if self.chance else f" (first {self.start[1]:.4g})"
        return f"loss {now:.4g}{against}: down {before - now:.2g} over the last {self.span} steps"

    def _windows(self) -> tuple[list[float], list[float]]:
        last = self.points[-1][0]
        earlier = [v for s, v in self.points if s <= last - self.span]
        return earlier, [v for s, v in self.points if s > last - self.span]

    @property
    def spread(self) -> float | None:
        """The last window's losses: standard deviation over mean (large for an oscillating loss)."""
        recent = self._windows()[1] if self.points else []
        mean = float(np.mean(recent)) if len(recent) > 1 else 0.0
        return float(np.std(recent)) / mean if mean > 0 else None

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to carry on."""
        return {"start": self.start, "points": list(self.points)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output."""
        start = state.get("start")
        self.start = tuple(start) if start is not None else None  # type: ignore[assignment]
        self.points = [tuple(point) for point in state.get("points", [])]  # type: ignore[misc]
