"""Likely causes and remedies for a verdict, drawn from the model's own configuration."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gradwatch.health.verdicts import Verdict

#: Activations whose derivative goes to zero for large inputs.
SATURATING = frozenset({"sigmoid", "tanh", "hardtanh", "softsign", "hardsigmoid"})
_NO_NORM = (None, "none", "identity")
#: Median update / weight ratios beyond which a stall is the learning rate's: far below or far above ~1e-3.
SLOW_UPDATES, FAST_UPDATES = 1e-5, 1e-1
#: Blocks from which a plain network (no residual) trains worse than a shallower one (He et al. 2016).
PLAIN_DEPTH = 10


def _name(value: Any) -> str | None:
    """A configured layer as a short name: ``"sigmoid"``, ``torch.nn.Sigmoid`` → ``"sigmoid"``."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return value.rsplit(".", 1)[-1].lower()
    return getattr(value, "__name__", type(value).__name__).lower()


def advise(
    verdict: Verdict,
    config: Mapping[str, Any],
    *,
    prefix: str = "",
    lr: float | None = None,
    clipping: bool = False,
    precision: str | None = None,
    updates: int | None = None,
    signals: Mapping[str, float] | None = None,
) -> str:
    """``"likely cause: ...; try ..."`` for ``verdict``, naming the model's settings as the user writes them.

    Args:
        verdict: The verdict.
        config: The model's hyperparameters (``activation``, ``depth``, ``norm``, ``residual``, ``cell``...).
        prefix: Prefix of the network's keys in ``config`` (``"g_"`` for a GAN's generator).
        lr: The optimizer's learning rate, if known.
        clipping: Whether the Trainer clips gradients.
        precision: The Trainer's precision (``"16-mixed"``...).
        updates: Optimizer steps taken before the measurement. At 0 no update has been made, so the learning rate
            cannot be the cause of large gradients: the initialization (or the data) is.
        signals: What was measured, for ``stalled``: ``update_ratio`` (the layers' median update / weight ratio),
            ``attenuation`` (log10, first layer's gradient over the last's) and ``spread`` (the recent losses'
            standard deviation over their mean).

    Example::

        >>> advise(Verdict.VANISHING, {"activation": "sigmoid", "depth": 24, "residual": False, "norm": "none"})
        'likely cause: sigmoid × 24 blocks without residual or norm; try activation=relu / residual=true / norm=batch'
    """

    def get(key: str) -> Any:
        return config.get(prefix + key)

    activation, norm, cell = _name(get("activation")), _name(get("norm")), _name(get("cell"))
    depth, residual = get("depth"), get("residual")
    recurrent = cell is not None
    # A norm remedy only for models that have a norm axis under that name.
    norm_fix = (
        f"{prefix}norm={'layer' if recurrent else 'batch'}" if norm in _NO_NORM and prefix + "norm" in config else None
    )
    causes: list[str] = []
    fixes: list[str] = []
    if verdict is Verdict.VANISHING:
        if cell == "rnn":
            causes.append("a vanilla rnn cell over long sequences")
            fixes.append(f"{prefix}cell=lstm")
        saturating = activation if activation in SATURATING and cell in (None, "rnn") else None
        missing = [name for name, off in (("residual", residual is False), ("norm", norm_fix is not None)) if off]
        if saturating or (missing and depth):
            blocks = f" × {depth} {'layers' if recurrent else 'blocks'}" if depth else ""
            without = f" without {' or '.join(missing)}" if missing else ""
            causes.append(f"{saturating or activation or 'the network'}{blocks}{without}")
        if saturating and not recurrent:  # a ReLU vanilla RNN trades vanishing for exploding; gated cells fix it
            fixes.append(f"{prefix}activation=relu")
        if residual is False:
            fixes.append(f"{prefix}residual=true")
        if not causes:
            causes.append("depth without skip connections, saturating activations or too small an initialization")
            fixes.append("residual connections, normalization or a non-saturating activation")
    elif verdict is Verdict.STALLED:
        _stalled(causes, fixes, signals or {}, lr, activation, norm_fix, residual, depth, prefix)
    elif updates == 0:  # large or non-finite before the first update: the weights the run started from
        init = _name(get("init"))
        if verdict is Verdict.NONFINITE:
            causes.append("a NaN / Inf from the data or the loss, or initial weights that overflow (before any update)")
        else:
            causes.append(
                f"the initialization{f' ({prefix}init={init})' if init else ''}: weights too large before any update"
            )
        if prefix + "init" in config and init not in ("kaiming", "xavier"):
            fixes.append(f"{prefix}init={'xavier' if activation in SATURATING else 'kaiming'}")
        else:
            fixes.append("a smaller initialization gain")
    elif verdict is Verdict.NONFINITE:
        causes.append("a gradient that overflowed, or a NaN / Inf from the loss or the data")
    else:
        causes.append("a learning rate too high for this network" + (f" (lr={lr:g})" if lr else ""))
    if verdict in (Verdict.EXPLODING, Verdict.NONFINITE):
        if lr and updates != 0:
            fixes.append(f"lr={lr / 10:g}")
        if not clipping and updates != 0:
            fixes.append("gradient_clip_val=1.0")
        if verdict is Verdict.NONFINITE and precision and precision.startswith("16"):
            fixes.append("precision=bf16-mixed")
    if norm_fix and norm_fix not in fixes and (verdict is not Verdict.VANISHING or "norm" in missing):
        fixes.append(norm_fix)
    return f"likely cause: {'; '.join(causes)}; try {' / '.join(fixes)}"


def _stalled(
    causes: list[str],
    fixes: list[str],
    signals: Mapping[str, float],
    lr: float | None,
    activation: str | None,
    norm_fix: str | None,
    residual: Any,
    depth: Any,
    prefix: str,
) -> None:
    """Causes and remedies of a stall while gradients flow: the learning rate, saturation, depth, attenuation."""
    ratio, attenuation, spread = (signals.get(key) for key in ("update_ratio", "attenuation", "spread"))
    current = f" (lr={lr:g})" if lr else ""
    if ratio is not None and 0 < ratio < SLOW_UPDATES:
        causes.append(
            f"a learning rate too small{current}: each step moves the weights by 10^{math.log10(ratio):.1f} of "
            "their size (healthy: about 10^-3)"
        )
        fixes.append(f"lr={lr * 100:g}" if lr else "a learning rate 100× larger")
        return
    if (ratio is not None and ratio > FAST_UPDATES) or (spread is not None and spread > 0.2):
        causes.append(f"a learning rate too large{current}: the loss oscillates instead of falling")
        fixes.append(f"lr={lr / 10:g}" if lr else "a learning rate 10× smaller")
        return
    if activation in SATURATING and norm_fix is not None:
        causes.append(f"{activation} units saturated: without normalization their inputs drift where the slope is ~0")
        fixes += [f"{prefix}activation=relu", norm_fix]
    if residual is False and isinstance(depth, int) and depth >= PLAIN_DEPTH:
        causes.append(
            f"a plain network {depth} blocks deep: deeper plain networks train worse even with healthy gradients "
            "(degradation, He et al. 2016)"
        )
        fixes.append(f"{prefix}residual=true")
    if not causes and attenuation is not None and attenuation < -2:
        causes.append(f"gradients 10^{attenuation:.1f} weaker at the input than at the output")
        fixes += [fix for fix in (f"{prefix}residual=true" if residual is False else None, norm_fix) if fix]
    if not causes:
        causes.append("the optimization is stuck near where it started (gradients flow, updates are of normal size)")
        fixes.append(f"lr={lr * 10:g}" if lr else "a learning rate 10× larger")
        fixes.append("another initialization or optimizer")
