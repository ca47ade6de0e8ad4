"""Sweep files: W&B's sweep YAML, loaded and checked before anything runs.

The schema is W&B's (``method``, ``metric``, ``parameters``, ``early_terminate``, ``run_cap``, ``command``), so one
file runs as a W&B sweep online and on the local engine offline. Errors name the file and the key path
(``parameters.model.depth.min``), the bad value and the valid choices.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradwatch.errors import ConfigError, unknown_choice
from gradwatch.rundir import GOALS

METHODS = ("grid", "random", "bayes")
TOP_LEVEL_KEYS = (
    "program", "entity", "project", "description", "name", "method", "metric", "parameters", "early_terminate",
    "command", "run_cap", "controller", "job", "image_uri",
)  # fmt: skip
#: W&B's distributions and the keys each one needs.
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max"),
    "log_uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform": ("min", "max"),
    "q_log_uniform_values": ("min", "max"),
    "inv_log_uniform": ("min", "max"),
    "inv_log_uniform_values": ("min", "max"),
    "normal": (),
    "q_normal": (),
    "log_normal": (),
    "q_log_normal": (),
    "beta": (),
    "q_beta": (),
    "categorical_w_probabilities": ("values", "probabilities"),
}
HYPERBAND_KEYS = ("min_iter", "max_iter", "s", "eta", "strict")
PARAMETER_KEYS = ("distribution", "value", "values", "min", "max", "q", "mu", "sigma", "a", "b", "probabilities")
#: Distributions grid search can enumerate, as W&B's grid search does.
GRID_DISTRIBUTIONS = ("constant", "categorical", "int_uniform", "q_uniform")
#: Distributions the local (Optuna) engine samples exactly; the others run on W&B only.
LOCAL_DISTRIBUTIONS = (
    "constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform", "log_uniform_values",
    "inv_log_uniform_values",
)  # fmt: skip
#: The most grid combinations the local engine enumerates unless told otherwise (``--max-grid``): Optuna's grid
#: sampler holds every combination in the controller's memory (about 1 kB each) and each trial stores the grid.
MAX_GRID = 10_000
MACROS = ("env", "interpreter", "program", "args", "args_no_hyphens", "args_no_boolean_flags", "args_json",
          "args_json_file", "args_no_equals", "args_append_hydra", "args_override_hydra")  # fmt: skip
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
_ENVVAR = re.compile(r"\$\{envvar:([A-Za-z0-9_]+)\}")


class SweepError(ConfigError):
    """A sweep file that cannot run; the message names the file and the key path."""


@dataclass(frozen=True)
class Parameter:
    """One swept parameter: its dotted name (``model.depth``), W&B distribution and bounds or values."""

    name: str
    distribution: str
    value: Any = None
    values: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    q: float | None = None
    #: Whether the file weights the values (``probabilities``): W&B's random search honours it, Optuna cannot.
    weighted: bool = False

    def grid(self) -> list[Any]:
        """Every value grid search visits, in W&B's order (``int_uniform`` inclusive, ``q_uniform`` as ``arange``)."""
        if self.distribution == "int_uniform":
            return list(range(int(self.min), int(self.max) + 1))
        if self.distribution == "q_uniform":
            return [round(self.min + i * (self.q or 1.0), 12) for i in range(self.grid_count())]
        return [self.value] if self.distribution == "constant" else list(self.values)

    def grid_count(self) -> int:
        """How many values :meth:`grid` holds, counted without making them (a range can be huge)."""
        if self.distribution == "int_uniform":
            return int(self.max) - int(self.min) + 1
        if self.distribution == "q_uniform":
            steps = (self.max - self.min) / (self.q or 1.0) - 1e-9
            return math.ceil(steps) if math.isfinite(steps) else sys.maxsize
        return 1 if self.distribution == "constant" else len(self.values)

    def examples(self) -> list[Any]:
        """Values that stand for the whole range when checking names and types: every value, or both bounds."""
        if self.distribution in ("constant", "categorical"):
            return self.grid()
        low, high = self.min, self.max
        if self.distribution == "log_uniform":  # W&B: bounds are natural logs of the values
            low, high = math.exp(low), math.exp(high)
        if self.distribution == "int_uniform":
            return [int(low), int(high)]
        return [low, high]


@dataclass(frozen=True)
class Metric:
    """The metric a sweep optimizes: ``name``, ``goal`` and the optional ``target`` that ends the sweep."""

    name: str
    goal: str = "minimize"
    target: float | None = None

    def reached(self, value: float) -> bool:
        """Whether ``value`` meets the target (never when there is none)."""
        if self.target is None:
            return False
        return value >= self.target if self.goal == "maximize" else value <= self.target


@dataclass(frozen=True)
class Hyperband:
    """W&B's ``early_terminate: {type: hyperband}``: ``min_iter`` or ``max_iter`` with ``s``, and ``eta``.

    Iterations count how many times the metric was logged, as on W&B.
    """

    min_iter: int
    eta: int = 3
    max_iter: int | None = None

    def is_rung(self, step: int) -> bool:
        """Whether Hyperband compares trials at the metric's ``step``-th value (0-based): ``min_iter × eta^k``."""
        while step > self.min_iter and step % self.eta == 0:
            step //= self.eta
        return step == self.min_iter


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file.

    Attributes:
        path: The file it came from.
        name: ``name`` from the file, else the file's stem.
        method: ``grid``, ``random`` or ``bayes``.
        parameters: The swept parameters by dotted name, in file order.
        command: The ``command`` list with its macros unexpanded.
        metric: What the sweep optimizes; required by ``bayes`` and hyperband.
        early_terminate: Hyperband settings, when the file asks for early termination.
        run_cap: The most trials the sweep runs.
        program: ``program`` from the file (``${program}``).
        config: The file's content as loaded, for W&B.
    """

    path: Path
    name: str
    method: str
    parameters: dict[str, Parameter]
    command: tuple[str, ...] = DEFAULT_COMMAND
    metric: Metric | None = None
    early_terminate: Hyperband | None = None
    run_cap: int | None = None
    program: str | None = None
    config: dict[str, Any] = field(default_factory=dict, compare=False)

    def grid_size(self) -> int:
        """How many combinations grid search visits (counted, not enumerated)."""
        return math.prod(p.grid_count() for p in self.parameters.values())

    def check_local(self, max_grid: int = MAX_GRID) -> None:
        """Raise :class:`SweepError` for what the local engine cannot run exactly as W&B would, or cannot afford.

        Args:
            max_grid: The most combinations a grid may have (the engine holds them all in memory).

        Raises:
            SweepError: a distribution Optuna has no exact counterpart for, or a grid larger than ``max_grid``.
        """
        if self.method == "grid" and self.grid_size() > max_grid:
            # The biggest factors first; equal ones in the file's order.
            counts = sorted(((p.name, p.grid_count()) for p in self.parameters.values()), key=lambda c: -c[1])
            counts = [(name, count) for name, count in counts if count > 1]
            factors = " × ".join(f"{name} {count:,}" for name, count in counts[:4]) + (" × ..." if counts[4:] else "")
            raise self.error(
                "parameters",
                f"the grid has {self.grid_size():,} combinations ({factors}), more than the local engine enumerates "
                f"({max_grid:,}): narrow it, sample it with method: random and run_cap, or raise --max-grid",
            )
        for p in self.parameters.values():
            if p.weighted:
                raise self.error(f"parameters.{p.name}.probabilities", "value probabilities run on W&B only")
            if p.distribution not in LOCAL_DISTRIBUTIONS:
                raise self.error(
                    f"parameters.{p.name}.distribution",
                    f"{p.distribution!r} runs on W&B only; the local engine samples {', '.join(LOCAL_DISTRIBUTIONS)}",
                )

    def error(self, key: str, message: str) -> SweepError:
        """A :class:`SweepError` for ``key`` of this file."""
        return SweepError(f"{self.path}: {key}: {message}")


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file.

    Args:
        path: A W&B sweep YAML file.

    Returns:
        The validated sweep.

    Raises:
        SweepError: the file is missing, is not YAML, or breaks W&B's sweep schema; the message names the key.

    Example::

        >>> spec = load_sweep("sweeps/quickstart.yaml")
        >>> spec.method, spec.metric.name
        ('grid', 'val/acc')
    """
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise SweepError(f"{path}: cannot read the sweep file: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise SweepError(f"{path}: not valid YAML: {exc}") from None
    return parse_sweep(raw, path)


def parse_sweep(raw: Any, path: str | Path = "<sweep>") -> SweepSpec:
    """Validate a sweep config already loaded into Python (see :func:`load_sweep`)."""
    path = Path(path)

    def fail(key: str, message: str) -> SweepError:
        return SweepError(f"{path}: {key}: {message}" if key else f"{path}: {message}")

    if not isinstance(raw, Mapping):
        raise fail("", f"a sweep file is a mapping of W&B sweep keys, got {type(raw).__name__}")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise fail(str(key), unknown_choice("sweep key", key, TOP_LEVEL_KEYS))
    if "method" not in raw:
        raise fail("method", f"missing; one of {', '.join(METHODS)}")
    method = raw["method"]
    if method not in METHODS:
        raise fail("method", unknown_choice("method", method, METHODS))
    metric = _metric(raw.get("metric"), fail)
    hyperband = _early_terminate(raw.get("early_terminate"), fail)
    if metric is None and method == "bayes":
        raise fail("metric", "bayes search needs a metric to optimize (metric: {name: ..., goal: ...})")
    if metric is None and hyperband is not None:
        raise fail("metric", "hyperband early termination needs a metric to compare runs on")
    parameters = raw.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        raise fail("parameters", "missing or empty; map each parameter name to its values or distribution")
    params = {str(name): _parameter(str(name), spec, method, fail) for name, spec in parameters.items()}
    run_cap = raw.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int) or run_cap < 1):
        raise fail("run_cap", f"must be an integer >= 1, got {run_cap!r}")
    command = _command(raw.get("command"), raw.get("program"), fail)
    return SweepSpec(
        path=path,
        name=_name(raw.get("name"), path, fail),
        method=method,
        parameters=params,
        command=command,
        metric=metric,
        early_terminate=hyperband,
        run_cap=run_cap,
        program=raw.get("program"),
        config=dict(raw),
    )


def _name(raw: Any, path: Path, fail: Any) -> str:
    """``name``, else the file's stem; it names the local sweep's folder, so it must stay one folder name."""
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (str, int, float))):
        raise fail("name", f"must be a string, got {raw!r}")
    name = str(raw) if raw not in (None, "") else path.stem
    if name in (".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise fail(
            "name",
            f"{name!r} is not a folder name: a local sweep runs in runs/sweeps/<name>, so the name cannot hold '/' or "
            "'\\' or be '.' or '..' (--dir chooses another folder)",
        )
    return name


def _metric(raw: Any, fail: Any) -> Metric | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise fail("metric.name", "missing; the key the runs log, e.g. val/acc")
    for key in raw:
        if key not in ("name", "goal", "target", "impute", "imputed_value", "impute_while_running"):
            raise fail(f"metric.{key}", unknown_choice("metric key", key, ("name", "goal", "target")))
    goal = raw.get("goal", "minimize")
    if goal not in GOALS:
        raise fail("metric.goal", unknown_choice("goal", goal, GOALS))
    target = raw.get("target")
    if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
        raise fail("metric.target", f"must be a number, got {target!r}")
    return Metric(raw["name"], goal, None if target is None else float(target))


def _early_terminate(raw: Any, fail: Any) -> Hyperband | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping) or raw.get("type") != "hyperband":
        got = raw.get("type") if isinstance(raw, Mapping) else raw
        raise fail("early_terminate.type", f"{got!r} is not supported; W&B's only type is 'hyperband'")
    for key in raw:
        if key not in ("type", *HYPERBAND_KEYS):
            raise fail(
                f"early_terminate.{key}",
                unknown_choice("hyperband key", key, ("min_iter", "max_iter", "s", "eta", "strict")),
            )
    for key in ("min_iter", "max_iter", "s", "eta"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise fail(f"early_terminate.{key}", f"must be an integer >= 1, got {value!r}")
    eta = raw.get("eta", 3)
    if eta < 2:
        raise fail("early_terminate.eta", f"must be >= 2, got {eta}")
    if "max_iter" in raw:  # W&B reads max_iter (with s) first when both are given
        if "s" not in raw:
            raise fail("early_terminate.s", "max_iter needs s, the number of brackets (or give min_iter instead)")
        # W&B's bands are max_iter / eta, max_iter / eta², ... (s of them, none under 1): the smallest is the first.
        bands = [int(raw["max_iter"] / eta**i) for i in range(1, raw["s"] + 1) if raw["max_iter"] / eta**i >= 1]
        if not bands:
            raise fail("early_terminate.max_iter", f"max_iter {raw['max_iter']} / eta is below 1 iteration")
        return Hyperband(min_iter=min(bands), eta=eta, max_iter=raw["max_iter"])
    if "min_iter" not in raw:
        raise fail("early_terminate", "hyperband needs min_iter, or max_iter with s (the number of brackets)")
    return Hyperband(min_iter=raw["min_iter"], eta=eta)


def _parameter(name: str, raw: Any, method: str, fail: Any) -> Parameter:
    key = f"parameters.{name}"
    if not isinstance(raw, Mapping):
        raise fail(key, f"must be a mapping such as {{values: [...]}} or {{min: .., max: ..}}, got {raw!r}")
    if "parameters" in raw:
        raise fail(key, "nested parameters are not supported: name each one with dots (model.depth)")
    for k in raw:
        if k not in PARAMETER_KEYS:
            raise fail(f"{key}.{k}", unknown_choice("parameter key", k, PARAMETER_KEYS))
    distribution = raw.get("distribution") or _infer_distribution(raw)
    if distribution is None:
        raise fail(key, "give value, values, or min and max (W&B infers the distribution from them)")
    if distribution not in DISTRIBUTIONS:
        raise fail(f"{key}.distribution", unknown_choice("distribution", distribution, DISTRIBUTIONS))
    for needed in DISTRIBUTIONS[distribution]:
        if needed not in raw:
            raise fail(
                f"{key}.{needed}",
                f"missing; distribution {distribution} needs {', '.join(DISTRIBUTIONS[distribution])}",
            )
    if "values" in raw and (not isinstance(raw["values"], list) or not raw["values"]):
        raise fail(f"{key}.values", f"must be a non-empty list, got {raw['values']!r}")
    if "probabilities" in raw and method == "grid":
        raise fail(f"{key}.probabilities", "grid search visits every value; probabilities apply to random search")
    low, high = raw.get("min"), raw.get("max")
    for bound, value in (("min", low), ("max", high), ("q", raw.get("q"))):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise fail(f"{key}.{bound}", f"must be a number, got {value!r}")
    if low is not None and high is not None and low > high:
        raise fail(f"{key}.min", f"min {low} is greater than max {high}")
    if distribution == "int_uniform" and not (isinstance(low, int) and isinstance(high, int)):
        raise fail(key, f"int_uniform needs integer min and max, got {low!r} and {high!r}")
    if distribution.endswith("log_uniform_values") and low is not None and low <= 0:
        raise fail(f"{key}.min", f"{distribution} needs min > 0, got {low}")
    if raw.get("q") is not None and raw["q"] <= 0:
        raise fail(f"{key}.q", f"must be > 0, got {raw['q']}")
    if method == "grid" and distribution not in GRID_DISTRIBUTIONS:
        raise fail(
            key,
            f"grid search cannot enumerate the continuous distribution {distribution}; "
            f"use values, value, int_uniform or q_uniform (or method: random / bayes)",
        )
    values = tuple(raw.get("values") or ())
    for i, v in enumerate(values):
        if isinstance(v, (list, dict)):
            raise fail(f"{key}.values[{i}]", f"{v!r}: values must be numbers, strings, booleans or null")
    weighted = "probabilities" in raw
    return Parameter(name, distribution, raw.get("value"), values, low, high, raw.get("q"), weighted)


def _infer_distribution(raw: Mapping[str, Any]) -> str | None:
    """W&B's rule: ``values`` → categorical, ``value`` → constant, integer bounds → int_uniform, else uniform."""
    if "values" in raw:
        return "categorical"
    if "value" in raw:
        return "constant"
    if "min" in raw and "max" in raw:
        both_int = all(isinstance(raw[k], int) and not isinstance(raw[k], bool) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    return None


def _command(raw: Any, program: Any, fail: Any) -> tuple[str, ...]:
    if raw is None:
        command: tuple[str, ...] = DEFAULT_COMMAND
    elif not isinstance(raw, list) or not raw:
        raise fail("command", f"must be a non-empty list of words, got {raw!r}")
    else:
        command = tuple(str(word) for word in raw)
    for i, word in enumerate(command):
        # The agent substitutes only words that are one macro; others pass through as typed.
        if word.startswith("${") and word.endswith("}") and not _ENVVAR.fullmatch(word):
            macro = word[2:-1]
            if macro not in MACROS:
                raise fail(f"command[{i}]", unknown_choice("macro", word, [f"${{{m}}}" for m in MACROS]))
    if "${program}" in command and not program:
        raise fail("program", "the command uses ${program} but the file names no program")
    if not any(word.startswith("${args") for word in command):
        close = difflib.get_close_matches("${args}", command, n=1)
        hint = f" ({close[0]!r} is not a macro)" if close else ""
        raise fail("command", f"passes no parameters to the trial: add ${{args}} or another ${{args...}} macro{hint}")
    return command
