"""Per-layer gradient statistics, computed on the device with fused ``torch._foreach_*`` ops, read in one transfer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from gradwatch.health.distributed import Sharding, any_process
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
        extra: The values of the ``extra`` tensors :meth:`GradientStatistics.measure` read along.
    """

    names: tuple[str, ...]
    grad_norm: np.ndarray
    param_norm: np.ndarray
    update_norm: np.ndarray | None = None
    nonfinite: np.ndarray | None = None
    histograms: np.ndarray | None = None
    extra: tuple[float, ...] = ()

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
    with np.errstate(invalid="ignore", over="ignore"):
        return np.sqrt(np.bincount(index, weights=values.astype(np.float64) ** 2, minlength=layers))


class GradientStatistics:
    """Fused per-layer statistics of one group of layers (one optimizer's parameters).

    Every statistic is computed on the parameters' device with ``torch._foreach_*`` ops and packed into one
    tensor, which :meth:`measure` copies to the host once. Nothing runs between measurements, except
    :meth:`snapshot` one optimizer step before a measurement that reports update ratios.

    Sharded parameters (FSDP2 ``DTensor`` s, FSDP1 ``use_orig_params`` views; see
    :mod:`gradwatch.health.distributed`) are measured whole: the local pieces' squared norms and counts are packed
    and summed over the processes with one all-reduce, so every process holds the full tensors' statistics.

    Args:
        layers: The layers, input side first (:func:`~gradwatch.health.layers.find_layers`).
        histograms: Also count log10 |grad| histograms per layer.
        sharding: How the layers' parameters are spread over processes (:meth:`Sharding.of`); whole when
            ``None``.

    Example::

        >>> from torch import nn
        >>> from gradwatch.health.layers import find_layers
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> model(torch.randn(16, 4)).pow(2).mean().backward()
        >>> stats = GradientStatistics(find_layers(model)).measure()
        >>> stats.names, bool(stats.total_norm > 0)
        (('0', '2'), True)
    """

    def __init__(self, layers: Sequence[Layer], *, histograms: bool = False, sharding: Sharding | None = None) -> None:
        self.layers = list(layers)
        self.names = tuple(layer.name for layer in self.layers)
        self.params = [p for layer in self.layers for p in layer.params]
        self.layer_of = np.array([i for i, layer in enumerate(self.layers) for _ in layer.params], dtype=np.int64)
        self.histograms = histograms
        self.sharding = sharding if sharding is not None else Sharding(self.params)
        self._buffer: list[torch.Tensor] | None = None
        self._snapshot: list[torch.Tensor] | None = None

    def _locals(self) -> list[torch.Tensor]:
        if not self.sharding.sharded:
            return self.params
        return [Sharding.local(p.detach()) for p in self.params]

    def _grads(self) -> tuple[list[int], list[torch.Tensor]]:
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = [self.params[i].grad for i in present]
        return present, [Sharding.local(g) for g in grads] if self.sharding.sharded else grads

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy the parameters (one fused op), so the next :meth:`measure` can report the update made in between.

        The copy goes into a buffer kept between snapshots: allocating it anew each time cost more than the copy
        itself on CPU (fresh pages). It holds one copy of the watched parameters (this process's pieces).
        """
        params = self._locals()
        if self._buffer is None:
            self._buffer = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
        torch._foreach_copy_(self._buffer, params)
        self._snapshot = self._buffer

    def discard_snapshot(self) -> None:
        """Forget a snapshot whose update will not be measured (the measurement did not happen)."""
        self._snapshot = None

    @torch.no_grad()
    def measure(self, extra: Sequence[torch.Tensor] = ()) -> Measurement:
        """Measure the current gradients: fused norms on the device, one copy to the host.

        Args:
            extra: 0-d tensors on the parameters' device to read in the same copy (their values land in
                :attr:`Measurement.extra`, not summed over processes).
        """
        params = self._locals()
        present, grads = self._grads()
        updates = self._snapshot or []
        self._snapshot = None
        if updates:
            torch._foreach_sub_(updates, params)  # before − after: the update, in the snapshot's memory
        if self.sharding.sharded:
            host = self._reduced(updates, params, present, grads, extra)
        else:
            # One fused norm over updates, weights and gradients, accumulated in float32 whatever their dtype. The
            # updates go first: the subtraction just wrote them, so they are still in cache.
            tensors = [*updates, *params, *grads]
            parts = [torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float32))]
            if self.histograms and grads:
                parts.append(torch.cat([self._histogram(g) for g in grads]))
            if extra:
                parts.append(torch.stack([e.float().reshape(()) for e in extra]))
            host = (torch.cat(parts) if len(parts) > 1 else parts[0]).cpu().numpy()  # the one device → host copy
        return self._unpack(host, present if not self.sharding.sharded else None, bool(updates), len(extra))

    def _reduced(
        self,
        updates: list[torch.Tensor],
        params: list[torch.Tensor],
        present: list[int],
        grads: list[torch.Tensor],
        extra: Sequence[torch.Tensor],
    ) -> np.ndarray:
        """The sharded layout, summed over processes in one all-reduce.

        Per parameter (an absent gradient as zeros): squared norms of this process's pieces of the update, the
        weights and the gradient, gradient presence and histogram counts, all scaled by ``1 / copies``.
        """
        n, device = len(params), params[0].device
        scale = self.sharding.scale(device)
        squares = torch.stack(torch._foreach_norm([*updates, *params], 2, dtype=torch.float32)).square()
        grad_squares = torch.zeros(n, dtype=torch.float32, device=device)
        has = torch.zeros(n, dtype=torch.float32, device=device)
        if grads:
            index = torch.tensor(present, device=device)
            grad_squares.index_copy_(0, index, torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)))
            grad_squares.square_()
            has.index_fill_(0, index, 1.0)
        parts = [squares * scale.repeat(2 if updates else 1), grad_squares * scale, has]
        if self.histograms:
            counts = torch.zeros(n, len(HISTOGRAM_EDGES), dtype=torch.float32, device=device)
            if grads:
                counts[index] = torch.stack([self._histogram(g) for g in grads])
            parts.append((counts * scale[:, None]).flatten())
        packed = self.sharding.sum(torch.cat(parts))  # the one collective
        norms = squares.numel() + n  # the updates', weights' and gradients' squared norms: back to norms
        packed[:norms] = packed[:norms].sqrt()
        if extra:
            packed = torch.cat([packed, torch.stack([e.float().reshape(()) for e in extra])])
        return packed.cpu().numpy()  # the one device → host copy

    def _unpack(self, host: np.ndarray, present: list[int] | None, update: bool, extras: int) -> Measurement:
        """Per-layer statistics from the packed per-parameter vector (``present=None``: the sharded layout)."""
        n_layers, n_params, offset = len(self.layers), len(self.params), 0
        update_norm = None
        if update:
            update_norm = _per_layer_norm(host[:n_params], self.layer_of, n_layers)
            offset = n_params
        param_norm = _per_layer_norm(host[offset : offset + n_params], self.layer_of, n_layers)
        offset += n_params
        if present is None:  # sharded: every parameter has a slot, and a presence count after the norms
            norms, has_param = host[offset : offset + n_params], host[offset + n_params : offset + 2 * n_params] > 0
            present = [int(i) for i in np.flatnonzero(has_param)]
            grad_values, offset = norms[present], offset + 2 * n_params
        else:
            grad_values, offset = host[offset : offset + len(present)], offset + len(present)
        grad_norm = np.full(n_layers, np.nan)
        index = self.layer_of[present]
        has_grad = np.bincount(index, minlength=n_layers) > 0
        if present:
            grad_norm[has_grad] = _per_layer_norm(grad_values, index, n_layers)[has_grad]
        histograms = None
        if self.histograms and present:
            bins = len(HISTOGRAM_EDGES)  # the zero bucket, then len(edges) - 1 bins
            slots = len(present) if not self.sharding.sharded else n_params
            counts = host[offset : offset + slots * bins].reshape(slots, bins)
            if self.sharding.sharded:
                counts = counts[present]
            histograms = np.zeros((n_layers, bins))
            np.add.at(histograms, index, counts)
        measurement = Measurement(self.names, grad_norm, param_norm, update_norm, None, histograms)
        measurement.extra = tuple(float(x) for x in host[len(host) - extras :]) if extras else ()
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
        """Non-finite gradient elements per layer.

        A second transfer, and under sharding a second all-reduce: only called once the reduced norms say something
        is wrong, which every process then agrees on.
        """
        present, grads = self._grads()
        counts = np.zeros(len(self.layers), dtype=np.int64)
        if self.sharding.sharded:
            device = self.params[0].device
            found = torch.zeros(len(self.params), dtype=torch.float32, device=device)
            if grads:
                local = torch.stack([(~torch.isfinite(g)).sum().float() for g in grads])
                found.index_copy_(0, torch.tensor(present, device=device), local)
            found = self.sharding.sum(found * self.sharding.scale(device)).cpu().numpy()
            np.add.at(counts, self.layer_of, np.rint(found).astype(np.int64))
        elif grads:
            found = torch.stack([(~torch.isfinite(g)).sum() for g in grads]).cpu().numpy()
            np.add.at(counts, self.layer_of[present], found)
        return counts

    @torch.no_grad()
    def finite(self) -> bool:
        """Whether every gradient is finite on every process (the per-step guard).

        One fused norm pass and one scalar copy, plus one scalar all-reduce when there are several processes, so
        that they all agree.
        """
        _, grads = self._grads()
        if grads:
            bad = ~torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32)).sum().isfinite()
        else:
            bad = torch.zeros((), dtype=torch.bool, device=self.params[0].device if self.params else None)
        return not any_process(bad)

    @torch.no_grad()
    def magnitudes(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and max |grad| per layer (NaN without a gradient), for the gradient-flow bars.

        One transfer, and under sharding one all-gather.
        """
        present, grads = self._grads()
        n_layers = len(self.layers)
        mean, peak = np.full(n_layers, np.nan), np.full(n_layers, np.nan)
        if self.sharding.sharded:
            present, l1, linf, numel = self._gathered_magnitudes(present, grads)
        elif grads:
            l1 = torch.stack(torch._foreach_norm(grads, ord=1)).float()
            linf = torch.stack(torch._foreach_norm(grads, ord=math.inf)).float()
            host = torch.cat([l1, linf]).cpu().numpy().astype(np.float64)
            l1, linf = host[: len(grads)], host[len(grads) :]
            numel = np.array([self.params[i].numel() for i in present], dtype=np.float64)
        if not present:
            return mean, peak
        index = self.layer_of[present]
        has_grad = np.bincount(index, minlength=n_layers) > 0
        sums = np.bincount(index, weights=l1, minlength=n_layers)
        counts = np.bincount(index, weights=numel, minlength=n_layers)
        peak[has_grad] = -np.inf
        with np.errstate(invalid="ignore"):  # a NaN gradient's max is NaN, which the bars draw as non-finite
            np.maximum.at(peak, index, linf)
        mean[has_grad] = sums[has_grad] / counts[has_grad]
        return mean, peak

    def _gathered_magnitudes(
        self, present: list[int], grads: list[torch.Tensor]
    ) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Sharded: every process's per-parameter L1 sums, element counts and max |grad| (absent: zero, -inf)."""
        n, device = len(self.params), self.params[0].device
        packed = torch.zeros(4, n, dtype=torch.float32, device=device)
        packed[2] = -math.inf
        if grads:
            index = torch.tensor(present, device=device)
            packed[0, index] = torch.stack(torch._foreach_norm(grads, ord=1)).float()
            packed[1, index] = torch.tensor([float(g.numel()) for g in grads], device=device)
            packed[2, index] = torch.stack(torch._foreach_norm(grads, ord=math.inf)).float()
            packed[3, index] = 1.0
        scale = self.sharding.scale(device)
        packed[:2] *= scale
        every = self.sharding.gather(packed.flatten()).reshape(-1, 4, n).cpu().numpy().astype(np.float64)
        l1, numel, linf, has = every[:, 0].sum(0), every[:, 1].sum(0), every[:, 2].max(0), every[:, 3].sum(0) > 0
        present = [int(i) for i in np.flatnonzero(has)]
        return present, l1[present], linf[present], numel[present]
