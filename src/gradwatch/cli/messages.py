"""A command-line mistake as one short paragraph: what was typed and where, did-you-mean, what is valid.

jsonargparse explains a rejected argument alternative by alternative, through every union and subclass it tried (50
to 70 lines for one typo). :func:`explain` reads that explanation and the command line back into at most three
lines: the flag (or config file and line) that was wrong, the closest valid name, and the valid names or the type
expected.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

#: How a type the parser expected reads in a message.
TYPE_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "text"}
#: What the class-valued options accept, and where the valid names come from.
KINDS = {"model": "model", "data": "DataModule", "gradients": "callback"}
EXAMPLES = {"model": "mypackage.MyModel", "data": "mypackage.MyDataModule", "gradients": "mypackage.MyMonitor"}


def explain(error: BaseException, argv: Sequence[str], options: Iterable[str]) -> str:
    """The paragraph for a parse ``error`` of the command line ``argv`` (at most three lines).

    Args:
        error: What the parser raised.
        argv: The subcommand's arguments as typed (``["fit", "--model", "cnn", ...]``).
        options: Every option string the subcommand's parser knows (``--trainer.max_epochs`` ...).
    """
    text = str(error)
    for explainer in (_missing_file, _yaml_syntax, _unknown_flag, _unknown_option, _unknown_class, _wrong_type):
        message = explainer(text, list(argv), set(options))
        if message:
            return message
    lines = [line.strip().lstrip("- ") for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _missing_file(text: str, argv: list[str], options: set[str]) -> str | None:
    match = re.search(r'Parser key "config": File does not exist: \'([^\']+)\'', text)
    if not match:
        return None
    typed = next((v for v in _config_files(argv) if Path(v).resolve() == Path(match.group(1)).resolve()), match[1])
    return f"--config {typed}: no such file"


def _yaml_syntax(text: str, argv: list[str], options: set[str]) -> str | None:
    if not text.startswith("Problems parsing config"):
        return None
    import yaml

    for path in _config_files(argv):
        try:
            yaml.safe_load(Path(path).read_text())
        except yaml.MarkedYAMLError as err:
            mark = err.problem_mark
            where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else path
            context = f" ({err.context})" if err.context else ""
            return f"{where}: {err.problem}{context}"
        except (OSError, yaml.YAMLError):
            continue
    return None


def _unknown_flag(text: str, argv: list[str], options: set[str]) -> str | None:
    match = re.search(r"unrecognized arguments: (\S+)", text)
    if not match:
        return None
    flag = match.group(1).split("=", 1)[0]
    valid = sorted(o for o in options if o.startswith("--") and not o.endswith(".help"))
    close = difflib.get_close_matches(flag, valid, n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]}?)" if close else ""
    section = flag[2:].split(".", 1)[0] if "." in flag else None
    scope = f"--{section}.*" if section and any(o.startswith(f"--{section}.") for o in valid) else "gradwatch fit"
    return f"{flag}: no such option{hint}; see {scope} in `gradwatch fit --help`"


def _unknown_option(text: str, argv: list[str], options: set[str]) -> str | None:
    option = re.search(r"Option '([^']+)' is not accepted", text)
    owner = re.search(r"class_path '([\w.]+)'", text)
    section = re.match(r'Parser key "([\w.]+)"', text)
    if not (option and owner and section):
        return None
    name, cls = option.group(1), _import(owner.group(1))
    valid = _init_parameters(cls)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    where = _where(section.group(1), name, argv)
    return f"{where}: {_short(owner.group(1))} has no option {name!r}{hint}\n  its options: {', '.join(valid)}"


def _unknown_class(text: str, argv: list[str], options: set[str]) -> str | None:
    value = re.search(r"Expected a dot import path string: (\S+)", text)
    section = re.match(r'Parser key "([\w.]+)"', text)
    # A class name that did not resolve, not a value deeper inside a class that did (an optimizer's lr).
    if not (value and section) or section.group(1) not in KINDS or "Problem with given class_path" in text:
        return None
    kind, typed = section.group(1), value.group(1)
    names = _choices(kind)
    lowered = {name.lower(): name for name in names}
    close = [lowered[typed.lower()]] if typed.lower() in lowered else difflib.get_close_matches(typed, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    what = KINDS[kind]
    return (
        f"--{kind} {typed}: no {what} {typed!r}{hint}\n"
        f"  {what}s: {', '.join(names)}, or the dotted import path of your own ({EXAMPLES[kind]})"
    )


def _wrong_type(text: str, argv: list[str], options: set[str]) -> str | None:
    keys = re.findall(r'Parser key "([\w.]+)"', text)
    expected = [t for t in re.findall(r"Expected a <class '(\w+)'>", text) if t != "NoneType"]
    if not keys or not expected:
        return None
    flag = "--" + ".".join(keys)
    value = _value_of(flag, argv)
    shown = f"{flag} {value}" if value is not None else flag
    words = " or ".join(dict.fromkeys(TYPE_WORDS.get(t, t) for t in expected))
    return f"{shown}: expected {words}"


def _value_of(flag: str, argv: list[str]) -> str | None:
    for i, word in enumerate(argv):
        if word == flag and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _where(section: str, name: str, argv: list[str]) -> str:
    """The flag that set option ``name`` of ``section``, else the config file and line that did."""
    for flag in (f"--{section}.{name}", f"--{section}.init_args.{name}"):
        if any(word == flag or word.startswith(flag + "=") for word in argv):
            return flag
    for path in _config_files(argv):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for number, line in enumerate(lines, start=1):
            if re.match(rf"\s*{re.escape(name)}\s*:", line):
                return f"{path}, line {number}"
    return f"--{section}.{name}"


def _config_files(argv: list[str]) -> list[str]:
    files = [argv[i + 1] for i, word in enumerate(argv[:-1]) if word in ("--config", "-c")]
    return files + [word.split("=", 1)[1] for word in argv if word.startswith("--config=")]


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(__import__(module, fromlist=[name]), name)
    except (ImportError, AttributeError):
        return None


def _init_parameters(cls: Any) -> list[str]:
    if cls is None:
        return []
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind not in skip]


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _choices(kind: str) -> list[str]:
    """The names ``--<kind>`` accepts without an import path: gradwatch's own classes of that kind."""
    import gradwatch

    if kind == "model":
        return ["CNN", "GAN", "RNN"]
    if kind == "data":
        return sorted(name for name in gradwatch.__all__ if name.endswith("DataModule"))
    return ["GradientMonitor", "ActivationMonitor"]
