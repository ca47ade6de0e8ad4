"""Which layers to watch: the modules that own parameters, in forward order (input → output)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradwatch.errors import ConfigError

#: The name of parameters owned directly by the root module (``named_modules`` calls it ``""``).
ROOT = "<root>"


@dataclass(frozen=True)
class Layer:
    """A watched layer: a module path (or a group of them) and the parameters it owns.

    Attributes:
        name: Module path such as ``backbone.blocks.3.conv``; the metric keys use it.
        params: Its trainable parameters, in registration order.
    """

    name: str
    params: tuple[nn.Parameter, ...]

    @property
    def numel(self) -> int:
        """Number of parameter elements."""
        return sum(p.numel() for p in self.params)


def check_patterns(patterns: Sequence[str] | None, *, owner: str, param: str) -> tuple[str, ...]:
    """``patterns`` (fnmatch patterns on layer names) as a tuple of non-empty strings.

    Args:
        patterns: ``None``, one pattern, or a sequence of them.
        owner: Who takes them, for the message (``"GradientMonitor"``).
        param: The argument that carried them (``"include"``).

    Raises:
        ConfigError: ``patterns`` is not a sequence of non-empty strings.
    """
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        patterns = [patterns]
    if not isinstance(patterns, Sequence) or not all(isinstance(p, str) and p for p in patterns):
        raise ConfigError(
            f"{owner}: {param} must be a list of non-empty fnmatch patterns on layer names (e.g. 'backbone.*'),"
            f" got {patterns!r}",
            param=param,
        )
    return tuple(patterns)


def _selected(name: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    if include and not any(fnmatch.fnmatchcase(name, pattern) for pattern in include):
        return False
    return not any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def layer_name(path: str) -> str:
    """The layer a module's parameters count for (:data:`ROOT` for the root).

    The path drops ``torch.compile``'s ``_orig_mod`` components and a parametrization's ``parametrizations.<tensor>``
    tail. So a compiled model's metric keys are the same as the plain model's, and a spectral-normalized layer is one
    layer whose weight (held by its parametrization) and bias are measured together.

    Example::

        >>> layer_name("_orig_mod.discriminator.head.1.parametrizations.weight")
        'discriminator.head.1'
    """
    parts = [part for part in path.split(".") if part != "_orig_mod"]
    if "parametrizations" in parts:
        parts = parts[: parts.index("parametrizations")]
    return ".".join(parts) or ROOT


def group_name(name: str, depth: int | None) -> str:
    """The first ``depth`` components of a module path (the path itself when ``depth`` is ``None``).

    Example::

        >>> group_name("backbone.blocks.3.conv", 3)
        'backbone.blocks.3'
    """
    return name if depth is None else ".".join(name.split(".")[:depth])


def find_layers(
    model: nn.Module,
    params: Iterable[nn.Parameter] | None = None,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    group_depth: int | None = None,
    depths: dict[int, tuple[int, int]] | None = None,
) -> list[Layer]:
    """The modules of ``model`` that own parameters among ``params``, ordered from input to output.

    Args:
        model: The model.
        params: The parameters to watch (one optimizer's); all of ``model``'s when ``None``.
        include: fnmatch patterns on module paths; when given, only matching modules are watched.
        exclude: fnmatch patterns on module paths that are never watched.
        group_depth: Merge modules that share the first ``group_depth`` path components into one layer (a block
            of a very deep model).
        depths: ``id(param)`` → place in the autograd graph (:func:`graph_depths`). Layers are ordered by it,
            nearest the input first; ties and parameters it lacks keep registration order.

    Returns:
        The layers, input side first.
    """
    wanted = None if params is None else {id(p) for p in params}
    groups: dict[str, list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if wanted is None or id(p) in wanted]
        name = layer_name(module_name)
        if not own or not _selected(name, include, exclude):
            continue
        groups.setdefault(group_name(name, group_depth), []).extend(own)
    layers = [Layer(name, tuple(ps)) for name, ps in groups.items()]
    if not depths:
        return layers
    position = {layer.name: i for i, layer in enumerate(layers)}

    def farthest(layer: Layer) -> tuple[int, int]:
        return max((depths.get(id(p), (-1, 0)) for p in layer.params), default=(-1, 0))

    return sorted(layers, key=lambda layer: (tuple(-x for x in farthest(layer)), position[layer.name]))


def graph_depths(loss: torch.Tensor) -> dict[int, tuple[int, int]]:
    """Where each parameter that ``loss`` depends on sits in the autograd graph: larger is nearer the input.

    The key is ``(depth, -position)``: the longest path from ``loss`` to the parameter, then (for ties) minus
    its position among its parent node's inputs. Under ``torch.compile`` the whole network is one backward node
    whose inputs are the parameters in forward first-use order, so the position keeps the forward order there.
    The graph already holds the forward order, so no forward hooks are needed (they would change what
    ``torch.compile`` traces). Parameters are keyed by ``id``.
    """
    root = loss.grad_fn
    if root is None:
        return {}
    order, seen, stack = [], set(), [(root, False)]
    while stack:  # iterative post-order DFS: a deep network's graph is deeper than Python's recursion limit
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        stack.extend((child, False) for child, _ in node.next_functions if child is not None and child not in seen)
    place = {root: (0, 0)}
    for node in reversed(order):  # parents before children: longest distances settle in one pass
        below = place.get(node, (0, 0))[0] + 1
        for position, (child, _) in enumerate(node.next_functions):
            if child is not None and place.get(child, (-1, 0)) < (below, -position):
                place[child] = (below, -position)
    return {id(node.variable): place[node] for node in order if hasattr(node, "variable")}
