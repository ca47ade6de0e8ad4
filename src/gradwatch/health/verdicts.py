"""Verdicts on gradient health: vanishing, exploding, non-finite, each naming its layers."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from gradwatch.health.stats import Measurement


class Verdict(str, Enum):
    """What is wrong with the gradients (a ``str`` Enum: ``Verdict.VANISHING == "vanishing"``)."""

    VANISHING = "vanishing"
    EXPLODING = "exploding"
    NONFINITE = "nonfinite"


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
