"""Which layers to watch: the modules that own parameters, in forward order (input → output)."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gradwatch.errors import ConfigError

#: The name of parameters owned directly by the root module (``named_modules`` calls it ``""``).
ROOT = "<root>"
#: Module path components that wrappers insert: ``torch.compile``, Lightning Fabric's ``setup_module``.
WRAPPERS = frozenset({"_orig_mod", "_forward_module", "_original_module"})


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

    The path drops the components wrappers add (``torch.compile``'s ``_orig_mod``, Fabric's ``_forward_module``) and a
    parametrization's ``parametrizations.<tensor>`` tail. So a compiled or Fabric-wrapped model's metric keys are the
    user's module paths, and a spectral-normalized layer is one layer whose weight (held by its parametrization) and
    bias are measured together.

    Example::

        >>> layer_name("_orig_mod.discriminator.head.1.parametrizations.weight")
        'discriminator.head.1'
    """
    parts = [part for part in path.split(".") if part not in WRAPPERS]
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
    order: Mapping[int, tuple[int, int]] | None = None,
) -> list[Layer]:
    """The modules of ``model`` that own parameters among ``params``, ordered from input to output.

    Each parameter belongs to one layer: a tied weight (``head.weight = embedding.weight``) counts for the first
    module that registers it, so no norm counts it twice.

    Args:
        model: The model.
        params: The parameters to watch (one optimizer's); all of ``model``'s when ``None``.
        include: fnmatch patterns on module paths; when given, only matching modules are watched.
        exclude: fnmatch patterns on module paths that are never watched.
        group_depth: Merge modules that share the first ``group_depth`` path components into one layer (a block
            of a very deep model).
        order: ``id(param)`` → when the forward pass first used it (:func:`forward_order`). A layer's place is its
            earliest parameter's. A layer without any entry (frozen in the pass that was read) follows the layer
            registered before it, so layers unfrozen later land where the model defines them.

    Returns:
        The layers, input side first.
    """
    wanted = None if params is None else {id(p) for p in params}
    seen: set[int] = set()
    groups: dict[str, list[nn.Parameter]] = {}
    for module_name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if (wanted is None or id(p) in wanted) and id(p) not in seen]
        seen.update(id(p) for p in own)
        name = layer_name(module_name)
        if not own or not _selected(name, include, exclude):
            continue
        groups.setdefault(group_name(name, group_depth), []).extend(own)
    layers = [Layer(name, tuple(ps)) for name, ps in groups.items()]
    if not order:
        return layers
    keys, previous = [], (-1, 0)
    for index, layer in enumerate(layers):
        known = [order[id(p)] for p in layer.params if id(p) in order]
        previous = min(known) if known else previous
        keys.append((previous, index))
    return [layers[i] for _, i in sorted((key, i) for i, key in enumerate(keys))]


def forward_order(loss: torch.Tensor, aliases: Mapping[int, int] | None = None) -> dict[int, tuple[int, int]]:
    """When the forward pass that produced ``loss`` first used each parameter: smaller is nearer the input.

    The key is ``(sequence number, position)``: autograd numbers its nodes in the order the forward pass creates
    them, and a parameter's key is that of the first node that consumed it, then its position among that node's
    inputs. A ``torch.compile`` region is one node whose inputs are its parameters in forward first-use order, so
    the position keeps the order inside it, and a compiled submodule keeps its place among eager ones. The graph
    already holds the order, so no forward hooks are needed (they would change what ``torch.compile`` traces).

    Args:
        loss: The output of the forward pass.
        aliases: ``id`` of a tensor the graph holds → ``id`` of the parameter it stands for (FSDP2 computes with
            unsharded copies of its sharded parameters: :func:`~gradwatch.health.distributed.unsharded_aliases`).

    Returns:
        ``id(param)`` → its key.
    """
    root = loss.grad_fn
    if root is None:
        return {}
    aliases = aliases or {}
    found: dict[int, tuple[int, int]] = {}
    seen, stack = {root}, [root]
    while stack:  # iterative: a deep network's graph is deeper than Python's recursion limit
        node = stack.pop()
        number = node._sequence_nr()
        for position, (child, _) in enumerate(node.next_functions):
            if child is None:
                continue
            variable = getattr(child, "variable", None)
            if variable is not None:
                key = aliases.get(id(variable), id(variable))
                found[key] = min(found.get(key, (number, position)), (number, position))
            elif child not in seen:
                seen.add(child)
                stack.append(child)
    return found
