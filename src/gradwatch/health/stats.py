"""Per-layer gradient statistics, computed on the device with fused ``torch._foreach_*`` ops, read in one transfer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradwatch.health.layers import Layer

#: Histogram bins of log10 |grad|: half decades from 1e-12 to 1e3 (values beyond land in the end bins).
HISTOGRAM_EDGES = np.arange(-12.0, 3.01, 0.5)


@dataclass
class Measurement:
    """One measurement of a group of layers, on the host.

    Attributes:
        names: Layer names, input side first.
        grad_norm: L2 norm of each layer's gradient; NaN where the layer had no gradient at this step.
        param_norm: L2 norm of each layer's parameters.
        update_norm: L2 norm of each layer's last update (parameters now minus before the previous optimizer
            step), or ``None`` when no update was recorded.
        nonfinite: Non-finite gradient elements per layer.
        histograms: ``(layers, 1 + bins)`` counts: elements exactly zero, then the log10 |grad| bins of
            :data:`HISTOGRAM_EDGES`; ``None`` unless requested.
    """

    names: tuple[str, ...]
    grad_norm: np.ndarray
    param_norm: np.ndarray
    update_norm: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    histograms: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.nonfinite is None:
            self.nonfinite = np.zeros(len(self.names), dtype=np.int64)

    @property
    def measured(self) -> np.ndarray:
        """Which layers had a gradient (a NaN norm with non-finite elements counts: that gradient exists)."""
        return ~np.isnan(self.grad_norm) | (self.nonfinite > 0)

    @property
    def total_norm(self) -> float:
        """L2 norm of the whole gradient (the norm gradient clipping compares with)."""
        norms = self.grad_norm[self.measured]
        return float(np.sqrt(np.sum(norms.astype(np.float64) ** 2))) if norms.size else 0.0

    @property
    def update_ratio(self) -> np.ndarray | None:
        """``‖update‖ / ‖parameters‖`` per layer (around 1e-3 is the usual healthy order of magnitude)."""
        if self.update_norm is None:
            return None
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.update_norm / self.param_norm

    @property
    def attenuation(self) -> float | None:
        """log10 of the first measured layer's gradient norm over the last's (negative: weaker at the input).

        ``None`` with fewer than two measured layers; ``-inf`` when the first layer's gradient is exactly zero.
        """
        norms = self.grad_norm[self.measured]
        if norms.size < 2 or not np.isfinite(norms[[0, -1]]).all() or norms[-1] == 0:
            return None
        with np.errstate(divide="ignore"):
            return float(np.log10(norms[0] / norms[-1]))


def _per_layer_norm(values: np.ndarray, index: np.ndarray, layers: int) -> np.ndarray:
    # sqrt of summed squares; NaN and inf propagate, which is what marks a non-finite layer.
    return np.sqrt(np.bincount(index, weights=values.astype(np.float64) ** 2, minlength=layers))


class GradientStatistics:
    """Fused per-layer statistics of one group of layers (one optimizer's parameters).

    Every statistic is computed on the parameters' device with ``torch._foreach_*`` ops and packed into one
    tensor, which :meth:`measure` copies to the host once. Nothing runs between measurements, except
    :meth:`snapshot` one optimizer step before a measurement that reports update ratios.

    Args:
        layers: The layers, input side first (:func:`~gradwatch.health.layers.find_layers`).
        histograms: Also count log10 |grad| histograms per layer.

    Example::

        >>> from torch import nn
        >>> from gradwatch.health.layers import find_layers
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> stats = GradientStatistics(find_layers(model)).measure()
        >>> stats.names, bool(stats.total_norm > 0)
        (('0', '2'), True)
    """

    def __init__(self, layers: Sequence[Layer], *, histograms: bool = False) -> None:
        self.layers = list(layers)
        self.names = tuple(layer.name for layer in self.layers)
        self.params = [p for layer in self.layers for p in layer.params]
        self.layer_of = np.array([i for i, layer in enumerate(self.layers) for _ in layer.params], dtype=np.int64)
        self.histograms = histograms
        self._buffer: list[torch.Tensor] | None = None
        self._snapshot: list[torch.Tensor] | None = None

    def _grads(self) -> tuple[list[int], list[torch.Tensor]]:
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        return present, [self.params[i].grad for i in present]

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the parameters (one fused op), so the next :meth:`measure` can report the update made in between.

        The copy goes into a buffer kept between snapshots: allocating it anew each time cost more than the copy
        itself on CPU (fresh pages). It holds one copy of the watched parameters.
        """
        if self._buffer is None:
            self._buffer = [torch.empty_like(p, memory_format=torch.preserve_format) for p in self.params]
        torch._foreach_copy_(self._buffer, self.params)
        self._snapshot = self._buffer

    def discard_snapshot(self) -> None:
        """Forget a snapshot whose update will not be measured (the measurement did not happen)."""
        self._snapshot = None

    @torch.no_grad()
    def measure(self) -> Measurement:
        """Measure the current gradients: fused norms on the device, one copy to the host."""
        present, grads = self._grads()
        tensors = [*self.params, *grads]
        update = self._snapshot is not None
        if update:
            torch._foreach_sub_(self._snapshot, self.params)  # before − after: the update, in the snapshot's memory
            tensors += self._snapshot
            self._snapshot = None
        # One fused norm over weights, gradients and updates, accumulated in float32 whatever their dtype.
        parts = [torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))]
        if self.histograms and grads:
            parts.append(torch.cat([self._histogram(g) for g in grads]))
        host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()  # the one device → host copy

        n_layers, n_params, n_grads = len(self.layers), len(self.params), len(grads)
        param_norm = _per_layer_norm(host[:n_params], self.layer_of, n_layers)
        offset = n_params
        grad_norm = np.full(n_layers, np.nan)
        has_grad = np.zeros(n_layers, dtype=bool)
        if grads:
            index = self.layer_of[present]
            has_grad = np.bincount(index, minlength=n_layers) > 0
            grad_norm[has_grad] = _per_layer_norm(host[offset : offset + n_grads], index, n_layers)[has_grad]
        offset += n_grads
        update_norm = None
        if update:
            update_norm = _per_layer_norm(host[offset : offset + n_params], self.layer_of, n_layers)
            offset += n_params
        histograms = None
        if self.histograms and grads:
            bins = len(HISTOGRAM_EDGES)  # the zero bucket, then len(edges) - 1 bins
            counts = host[offset : offset + n_grads * bins].reshape(n_grads, bins)
            histograms = np.zeros((n_layers, bins))
            np.add.at(histograms, self.layer_of[present], counts)
        measurement = Measurement(self.names, grad_norm, param_norm, update_norm, None, histograms)
        if not np.isfinite(grad_norm[has_grad]).all():
            measurement.nonfinite = self.count_nonfinite()
        return measurement

    @staticmethod
    def _histogram(grad: torch.Tensor) -> torch.Tensor:
        magnitude = grad.detach().float().abs()
        zeros = (magnitude == 0).sum().unsqueeze(0).float()
        low, high = HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]
        # Clamped, so magnitudes beyond the edges count in the end bins; zeros (log10 = -inf) land in the first bin
        # too and are taken out again by subtracting the zero bucket.
        logs = torch.log10(magnitude).clamp_(low, high)
        counts = torch.histc(logs, bins=len(HISTOGRAM_EDGES) - 1, min=low, max=high)
        counts[0] -= zeros[0]
        return torch.cat([zeros, counts])

    @torch.no_grad()
    def count_nonfinite(self) -> np.ndarray:
        """Non-finite gradient elements per layer (a second transfer: only called once something is wrong)."""
        present, grads = self._grads()
        counts = np.zeros(len(self.layers), dtype=np.int64)
        if grads:
            found = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).cpu().numpy()
            np.add.at(counts, self.layer_of[present], found)
        return counts

    @torch.no_grad()
    def finite(self) -> bool:
        """Whether every gradient is finite: one fused norm pass and one scalar copy (the per-step guard)."""
        _, grads = self._grads()
        if not grads:
            return True
        return bool(torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).sum().isfinite().item())

    @torch.no_grad()
    def magnitudes(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and max |grad| per layer (NaN without a gradient), for the gradient-flow bars; one transfer."""
        present, grads = self._grads()
        n_layers = len(self.layers)
        mean, peak = np.full(n_layers, np.nan), np.full(n_layers, np.nan)
        if not grads:
            return mean, peak
        l1 = torch.stack(torch._foreach_norm(grads, ord=1)).float()
        linf = torch.stack(torch._foreach_norm(grads, ord=math.inf)).float()
        host = torch.cat([l1, linf]).cpu().numpy().astype(np.float64)
        index = self.layer_of[present]
        has_grad = np.bincount(index, minlength=n_layers) > 0
        numel = np.bincount(index, weights=[self.params[i].numel() for i in present], minlength=n_layers)
        sums = np.bincount(index, weights=host[: len(grads)], minlength=n_layers)
        peak[has_grad] = -np.inf
        np.maximum.at(peak, index, host[len(grads) :])
        mean[has_grad] = sums[has_grad] / numel[has_grad]
        return mean, peak
