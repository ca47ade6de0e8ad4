"""Warm trial workers: trials of gradwatch's own command forked from a process that has already imported it.

A ``gradwatch fit`` trial spends its first seconds importing torch, Lightning and W&B. The local engine starts one
fork server per sweep (``python -m gradwatch.sweep.warm``, a child of the controller): it imports what ``gradwatch
fit`` imports (:data:`PRELOAD`, by name, so this package stays light), runs no torch op and starts no W&B, then forks
one process per trial, as gunicorn's ``preload_app`` or Ray's reused workers do. Each fork is made into what a fresh
``python -m gradwatch ...`` would be before it runs the program's ``__main__``:

- its own session and process group, and SIGTERM when the fork server dies (which gets SIGTERM when the controller
  dies), so killing the controller stops every trial as it does without warm workers;
- the trial's argv (``sys.argv``, ``sys.executable``), environment (``os.environ`` and the C environment, so
  ``WANDB_RUN_ID``, ``WANDB_SWEEP_PARAM_PATH``, ``CUDA_VISIBLE_DEVICES``...), working directory and ``sys.path``
  (its ``PYTHONPATH``); stdin from ``/dev/null``, stdout and stderr on the trial's log;
- thread counts: torch's from the trial's ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (the engine sets one for every
  trial on CPUs); OpenBLAS (numpy's, scipy's) reads its count when it is loaded, so the server loads it with one
  thread (no thread to fork) and the trial sets the count a fresh process would have;
- fresh random state: ``random`` is reseeded at every fork by Python, numpy's global generator here; torch's default
  generator is untouched, as in a fresh process (its seed is a constant);
- its own temporary folders where an import made one (``tempfile.TemporaryDirectory``: W&B's media and artifact
  staging), else the first trial to exit would remove them for every other;
- the program's exit: the interpreter ends the trial as it ends any program (exit code, traceback and status 1 for
  an uncaught exception, ``atexit`` handlers such as W&B's teardown); SIGTERM and SIGKILL reach the trial itself.

Nothing may run beside the fork: before each one the server checks that it has one thread (counted by the kernel,
not only Python's threads) and that CUDA is not initialized nor the NVIDIA driver open; otherwise it refuses, the
controller starts the trial as a plain process and says why in one line, and warm workers stay off for the sweep.
A trial whose environment changes what is read only when an interpreter starts (``PYTHONHASHSEED``, ``LD_PRELOAD``,
torch's import-time settings, thread counts it leaves unset where the server's were set...) also starts as a plain
process, with one line. Other commands always do.

What stays the server's: the code it imported when the sweep started (edit gradwatch mid-sweep and later trials
still run the old code; restart the sweep) and its hash seed (unless ``PYTHONHASHSEED`` pins both).

Online agents (``gradwatch sweep agent``) are not served. ``wandb.agent`` starts each trial's command with its own
``subprocess.Popen`` (``wandb_agent.AgentProcess``: its own process group, stdin a closed pipe), then polls,
signals and waits on that handle; its public API takes no process factory. Its ``function=`` form instead runs the
trial inside the agent's process, with none of a fresh process's semantics. Serving it would take a thin client as
the program the agent starts (the way Rails' spring or nailgun work): ``gradwatch`` itself handing its argv,
environment, working directory and stdio descriptors to a fork server and relaying signals and the exit code. That
is a change to ``gradwatch.cli``'s entry point, not to the sweep engine.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import errno
import gc
import importlib
import json
import os
import runpy
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gradwatch.rundir import PREEMPTED_EXIT

#: What ``gradwatch fit`` imports before its first step (its CLI, models, data, W&B, the digits loader): imported by
#: name in the fork server only, so that the controller, which imports this module, stays light.
PRELOAD = (
    "gradwatch.cli",
    "gradwatch.cli.fit",
    "gradwatch.models",
    "gradwatch.data",
    "sklearn.datasets",
    "wandb",
    "wandb.sdk.launch",  # wandb.init imports it (pydantic models: a second of CPU in every run)
)
#: Programs served warm: ``python -m gradwatch ...`` and the ``gradwatch`` script, of the controller's interpreter.
PROGRAMS = ("gradwatch",)
#: Variables an interpreter or a library reads once, at start-up or import: a trial whose value differs from the
#: server's cannot start from it. Prefixes, less those a trial gets applied: its PYTHONPATH, OpenBLAS's counts, and
#: torch's when the trial sets them (torch's own default when they are unset is not known here).
READ_AT_START = ("PYTHON", "LD_", "LANG", "LC_", "MALLOC_", "TORCH", "PYTORCH", "OMP_", "KMP_", "GOMP_", "MKL_")
APPLIED = frozenset({"PYTHONPATH", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS"})
APPLIED_WHEN_SET = frozenset({"OMP_NUM_THREADS", "MKL_NUM_THREADS"})
#: Seconds the controller waits for the server's imports, and for its answer to a request, before it gives up on it.
READY_TIMEOUT = 180.0
REPLY_TIMEOUT = 60.0
#: The largest message (a trial's environment is most of it).
MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class Entry:
    """How a warm worker runs a command: ``python -m <target> ...`` (``module``) or the script ``target`` (``script``).

    Attributes:
        kind: ``"module"`` or ``"script"``.
        target: The module's name, or the script's path.
        args: The program's arguments (``sys.argv[1:]``).
        executable: The interpreter a fresh process would be (``sys.executable``).
        env: The environment it runs with, ``env NAME=value`` words applied.
    """

    kind: str
    target: str
    args: list[str]
    executable: str
    env: dict[str, str]


def warm_entry(command: Sequence[str], env: Mapping[str, str], programs: Sequence[str] = PROGRAMS) -> Entry | None:
    """How a warm worker runs ``command`` with ``env``, or ``None`` when it must start as a plain process.

    Served: ``[env [NAME=value ...]] python -m <program> ...`` where ``python`` (looked up on ``env``'s ``PATH``)
    is this interpreter, and ``[env ...] <program> ...`` where ``<program>`` is a script run by it (pip's console
    script). Interpreter options, ``env`` options and any other program are not.

    Example::

        >>> import sys; from pathlib import Path
        >>> path = {"PATH": str(Path(sys.executable).parent)}
        >>> warm_entry(["/usr/bin/env", "python", "-m", "gradwatch", "fit"], path).args
        ['fit']
        >>> warm_entry(["/usr/bin/env", "python", "train.py"], path) is None
        True
    """
    words, env = list(command), dict(env)
    if words and Path(words[0]).name == "env":
        words.pop(0)
        while words and "=" in words[0] and not words[0].startswith("-"):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        if words and words[0].startswith("-"):  # `env -i`, `env -u NAME`: not worth reading
            return None
    found = shutil.which(words[0], path=env.get("PATH", os.defpath)) if words else None
    if found is None:
        return None
    if len(words) >= 3 and words[1] == "-m" and words[2] in programs and _is_this_python(found):
        return Entry("module", words[2], words[3:], found, env)
    if Path(found).name in programs and _is_this_python(_shebang(found)):
        return Entry("script", found, words[1:], _shebang(found), env)
    return None


def _is_this_python(path: str) -> bool:
    """Whether ``path`` is this interpreter: the same file in the same folder (a venv is told by its folder)."""
    if not path:
        return False
    ours = Path(sys.executable).absolute()
    try:
        return Path(path).absolute().parent == ours.parent and os.path.samefile(path, ours)
    except OSError:
        return False


def _shebang(path: str) -> str:
    """The interpreter on a script's ``#!`` line, when it names one by absolute path ("" otherwise)."""
    try:
        with open(path, "rb") as f:
            line = f.readline(512)
    except OSError:
        return ""
    words = line[2:].decode(errors="replace").split() if line.startswith(b"#!") else []
    return words[0] if len(words) == 1 and words[0].startswith("/") else ""


def start_time_difference(trial: Mapping[str, str], server: Mapping[str, str]) -> str | None:
    """The first variable read at start-up that ``trial`` sets otherwise than ``server``, said in words; or ``None``."""
    names = {name for name in (*trial, *server) if name.startswith(READ_AT_START) and name not in APPLIED}
    for name in sorted(names):
        if trial.get(name) != server.get(name) and not (name in APPLIED_WHEN_SET and name in trial):
            return f"its {name} differs from the warm worker's (read when an interpreter starts)"
    return None


# --- the controller's side -----------------------------------------------------------------------------------


class WarmWorkers:
    """The controller's handle on one fork server, started on the first :meth:`popen` of a command it serves.

    Args:
        echo: Where the one line about a fallback goes.
        preload: Modules the server imports before it forks anything.
        programs: The programs served warm (:func:`warm_entry`).
        ready_timeout: Seconds to wait for the server's imports before trials start as plain processes.
        environ: The environment the server starts in: the one trials start from (this process's by default).

    Example::

        with WarmWorkers() as workers:
            process = workers.popen(command, env=env, stdout=log) or subprocess.Popen(command, env=env, stdout=log)
            code = process.wait()
    """

    def __init__(
        self,
        *,
        echo: Callable[[str], None] = print,
        preload: Sequence[str] = PRELOAD,
        programs: Sequence[str] = PROGRAMS,
        ready_timeout: float = READY_TIMEOUT,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.echo = echo
        self.environ = environ
        self.preload = tuple(preload)
        self.programs = tuple(programs)
        self.ready_timeout = ready_timeout
        self.server: subprocess.Popen | None = None
        self.server_env: dict[str, str] = {}
        self.preload_seconds: float | None = None
        self._sock: socket.socket | None = None
        self._ready = False
        self._off: str | None = None
        self._said: set[str] = set()
        self._live: dict[int, WarmProcess] = {}
        self._reply: dict[str, Any] | None = None

    def __enter__(self) -> WarmWorkers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def off(self) -> str | None:
        """Why warm workers were turned off for good (the server failed or cannot fork), or ``None``."""
        return self._off

    def popen(
        self, args: Sequence[str], *, env: Mapping[str, str], stdout: IO[Any], cwd: str | Path | None = None
    ) -> WarmProcess | None:
        """Start ``args`` forked from the warm worker, stdout and stderr on ``stdout``; ``None``: start it yourself.

        ``None`` means the command is not served (silently), or it cannot start warm (one line, once per reason).

        Raises:
            OSError: ``cwd`` is not a folder (as :class:`subprocess.Popen` raises).
        """
        entry = warm_entry(args, env, self.programs)
        if entry is None or not self.start():
            return None
        why = start_time_difference(entry.env, self.server_env)
        if why is not None:
            self._say(f"a trial starts as a fresh process: {why}")
            return None
        request = {
            "op": "spawn",
            "kind": entry.kind,
            "target": entry.target,
            "args": entry.args,
            "executable": entry.executable,
            "env": entry.env,
            "cwd": os.path.abspath(cwd if cwd is not None else os.getcwd()),
        }
        reply = self._call(request, stdout.fileno())
        if reply is None:
            return None
        if reply["op"] == "refused":
            self._turn_off(f"the warm worker cannot fork: {reply['reason']}")
            return None
        if reply["op"] == "error":
            raise OSError(reply["errno"], os.strerror(reply["errno"]), reply.get("filename"))
        process = WarmProcess(self, reply["pid"], list(args))
        self._live[process.pid] = process
        return process

    def launch(self) -> bool:
        """Start the fork server, if it is not running, without waiting for its imports (:meth:`start` waits).

        A controller calls it first thing, so the server's imports overlap its own work (checking the sweep file).
        """
        return self._off is None and self._launch()

    def serves(self, args: Sequence[str], env: Mapping[str, str]) -> bool:
        """Whether ``args`` run with ``env`` would be forked from the warm worker (:func:`warm_entry`)."""
        return warm_entry(args, env, self.programs) is not None

    def start(self) -> bool:
        """Start the fork server, if it is not running, and wait for its imports; ``False`` when warm workers are off.

        :meth:`popen` calls it: every trial started before the server is ready would import torch itself, on the
        cores the server needs for the same imports.
        """
        if self._off is not None or not self._launch():
            return False
        return self._wait(lambda: self._ready, self.ready_timeout, "its imports took more than {:.0f} s")

    def close(self, *, now: bool = False) -> None:
        """Stop the fork server (trials still running get SIGTERM, as when the controller dies).

        Args:
            now: Kill it rather than wait for it to see the closed connection, which it does only once its imports
                are done: a controller that refuses its sweep file must not wait seconds for them.
        """
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.server is not None and now:
            self.server.kill()
        if self.server is not None:
            try:
                self.server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
            self.server = None
        self._ready = False
        for process in list(self._live.values()):
            process._lost()

    def _launch(self) -> bool:
        if self.server is not None:
            return self._sock is not None
        if not sys.platform.startswith("linux"):
            self._turn_off("warm workers need Linux (fork, parent-death signals, /proc)")
            return False
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.server_env = dict(self.environ if self.environ is not None else os.environ)
        # Loaded with one thread, OpenBLAS (numpy's, at the server's first import) starts no thread pool; each trial
        # gets the count of a fresh process. Albumentations' import would check online for a release, in a thread.
        env = {**self.server_env, "OPENBLAS_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
        command = [sys.executable, "-m", "gradwatch.sweep.warm", "--fd", str(theirs.fileno())]
        command += ["--parent", str(os.getpid()), "--preload", ",".join(self.preload)]
        try:
            self.server = subprocess.Popen(
                command,
                env=env,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal is the controller's to handle, not the server's
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            ours.close()
            self._turn_off(f"cannot start it: {exc.strerror}", stop=True)
            return False
        finally:
            theirs.close()
        self._sock = ours
        return True

    def _call(self, request: dict[str, Any], fd: int) -> dict[str, Any] | None:
        """Send ``request`` with ``fd`` and return the server's reply (exits that arrive first are recorded)."""
        self._reply = None
        try:
            socket.send_fds(self._sock, [json.dumps(request).encode()], [fd])
        except OSError as exc:
            self._turn_off(f"cannot reach it: {exc.strerror or exc}")
            return None
        answered = self._wait(lambda: self._reply is not None, REPLY_TIMEOUT, "it did not answer within {:.0f} s")
        return self._reply if answered else None

    def _wait(self, done: Callable[[], bool], timeout: float, late: str) -> bool:
        """Read the server's messages until ``done()``; past ``timeout`` seconds turn warm workers off (``late``)."""
        deadline = time.monotonic() + timeout
        while not done() and self._sock is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                self._turn_off(late.format(timeout), stop=True)
                return False
            self._pump(left)
        return done()

    def _signal(self, pid: int, signum: int) -> None:
        # The server sends it: the pid cannot have been reused until the server itself reaps the trial.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(json.dumps({"op": "signal", "pid": pid, "signal": int(signum)}).encode())

    def _pump(self, timeout: float | None) -> None:
        """Read every message waiting, after waiting up to ``timeout`` seconds (``None``: until one comes) for one."""
        wait = timeout
        while self._sock is not None:
            if not select.select([self._sock], [], [], wait)[0]:
                return
            try:
                data = self._sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                self._server_gone()
                return
            self._handle(json.loads(data))
            wait = 0

    def _handle(self, message: dict[str, Any]) -> None:
        op = message["op"]
        if op == "exited":
            process = self._live.pop(message["pid"], None)
            if process is not None:
                process.returncode = message["returncode"]
        elif op == "ready":
            self._ready = True
            self.preload_seconds = message["seconds"]
        elif op == "failed":  # its imports failed
            self._turn_off(message["reason"], stop=True)
        else:
            self._reply = message

    def _server_gone(self) -> None:
        code = None
        if self.server is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.server.wait(timeout=2)
        how = f"exit status {code}" if code is not None and code >= 0 else f"signal {-code}" if code else "no reply"
        if self._off is None:
            self._turn_off(f"the warm worker ended ({how})")
        self._stop()

    def _turn_off(self, why: str, *, stop: bool = False) -> None:
        """Start no more trials warm; ``stop``: the server too (else it stays to report the trials it runs)."""
        self._off = why
        self._say(f"warm trial workers off: {why}; trials start as fresh processes")
        if stop:
            self._stop()

    def _stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
        for process in list(self._live.values()):
            process._lost()

    def _say(self, line: str) -> None:
        if line not in self._said:
            self._said.add(line)
            self.echo(line)


class WarmProcess:
    """A trial forked by the warm worker, with the part of :class:`subprocess.Popen`'s interface a sweep uses.

    Attributes:
        pid: The trial's process id (also its process group's and session's).
        args: The command it runs.
        returncode: ``None`` while it runs; then its exit status, or ``-N`` when signal N ended it.
    """

    def __init__(self, workers: WarmWorkers, pid: int, args: list[str]) -> None:
        self._workers = workers
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._orphan = False

    def poll(self) -> int | None:
        """The exit status once the trial ended, else ``None``."""
        if self.returncode is None:
            if self._orphan:
                self._check_orphan()
            else:
                self._workers._pump(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the trial to end and return its exit status.

        Raises:
            subprocess.TimeoutExpired: it still runs after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            if self._orphan:
                time.sleep(0.1 if left is None else min(0.1, left))
            else:
                self._workers._pump(left)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the trial, unless it has ended."""
        if self.poll() is not None:
            return
        if self._orphan:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
        else:
            self._workers._signal(self.pid, signum)

    def terminate(self) -> None:
        """SIGTERM: ``gradwatch fit`` saves a checkpoint and exits 143 (or 0 when asked to stop)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def _lost(self) -> None:
        """The server is gone: the trial got SIGTERM with it, and no one will report its exit status."""
        self._orphan = True

    def _check_orphan(self) -> None:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                gone = f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except OSError:
            gone = True
        if gone:  # what `gradwatch fit` exits with on SIGTERM: the sweep runs it again from its checkpoint
            self.returncode = PREEMPTED_EXIT


def die_with_parent() -> None:
    """In a new process: get SIGTERM when its parent dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


# --- the fork server ---------------------------------------------------------------------------------------


def fork_hazard() -> str | None:
    """Why this process must not fork a trial now (a thread alive, CUDA in use), or ``None``."""
    threads = os.listdir("/proc/self/task")
    if len(threads) > 1:
        named = [t.name for t in threading.enumerate() if t is not threading.main_thread()]
        which = f": Python threads {', '.join(named)}" if named else " (started outside Python)"
        return f"{len(threads)} threads run in it{which}"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return "CUDA is initialized in it"
    # The imports must not touch the GPU at all: a driver opened before the fork (cuInit, or NVML counting devices)
    # is shared with every trial, and CUDA does not survive a fork.
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/nvidia"):
                return "the NVIDIA driver is open in it"
    return None


class _Server:
    """The fork server's loop: ``serve`` returns only in a forked trial, with what it runs."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.poller = select.poll()
        self.pythonpath = _split_path(os.environ.get("PYTHONPATH"))
        # sys.path of a fresh interpreter, less its first entry (the script's folder or the working directory) and
        # PYTHONPATH's entries, which follow it: those two are the trial's own.
        self.base_path = [p for p in sys.path[1:] if p not in self.pythonpath]
        self.temp_dirs: list[tempfile.TemporaryDirectory] = []

    def preloaded(self) -> None:
        """Note what the imports made that each trial must have its own of."""
        # Folders made at import (W&B's media and artifact staging): every trial would share the server's, and the
        # first to exit would remove them for all (its atexit cleanup). A trial gets folders of its own instead.
        self.temp_dirs = [o for o in gc.get_objects() if isinstance(o, tempfile.TemporaryDirectory)]

    def send(self, message: dict[str, Any]) -> None:
        self.sock.send(json.dumps(message).encode())

    def serve(self) -> _Trial | None:
        self.poller.register(self.sock, select.POLLIN)
        while True:
            for fd, _ in self.poller.poll():
                if fd != self.sock.fileno():
                    self._reap(fd)
                    continue
                data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
                if not data:  # the controller closed its end or died: trials still running get SIGTERM as we exit
                    return None
                request = json.loads(data)
                if request["op"] == "signal":
                    if request["pid"] in self.children.values():  # not reaped yet, so still this trial's pid
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(request["pid"], request["signal"])
                elif request["op"] == "spawn":
                    trial = self._spawn(request, fds)
                    if trial is not None:
                        return trial

    def _reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        self.send({"op": "exited", "pid": pid, "returncode": os.waitstatus_to_exitcode(status)})

    def _spawn(self, request: dict[str, Any], fds: list[int]) -> _Trial | None:
        (log,) = fds
        try:
            hazard = fork_hazard()
            if hazard is not None:
                self.send({"op": "refused", "reason": hazard})
                return None
            if not os.path.isdir(request["cwd"]):
                self.send({"op": "error", "errno": errno.ENOENT, "filename": request["cwd"]})
                return None
            sys.stdout.flush()  # nothing buffered here may reach a trial's log twice
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    return self._become(request, log)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(1)
            pidfd = os.pidfd_open(pid)
            self.children[pidfd] = pid
            self.poller.register(pidfd, select.POLLIN)
            self.send({"op": "spawned", "pid": pid})
            return None
        finally:
            if os.getpid() == self.pid:
                os.close(log)

    def _become(self, request: dict[str, Any], log: int) -> _Trial:
        """In the forked child: turn this copy of the server into a fresh process of the trial's command."""
        os.setsid()
        die_with_parent()
        if os.getppid() != self.pid:  # the server died before the line above: as its SIGTERM would have
            os._exit(128 + signal.SIGTERM)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        for fd in (devnull, log, *self.children):
            os.close(fd)
        self.sock.close()
        os.chdir(request["cwd"])
        env = request["env"]
        os.environ.clear()  # putenv/unsetenv: libraries that read the C environment see the trial's too
        os.environ.update(env)
        kind, target, args = request["kind"], request["target"], request["args"]
        first = os.getcwd() if kind == "module" else os.path.dirname(os.path.realpath(target))
        sys.path[:] = [first, *_split_path(env.get("PYTHONPATH")), *self.base_path]
        importlib.invalidate_caches()  # folders the server listed may have changed since
        sys.executable = request["executable"]
        sys.argv = ["-m" if kind == "module" else target, *args]
        sys.orig_argv = [sys.executable, *(["-m", target] if kind == "module" else [target]), *args]
        _apply_thread_counts(env)
        for folder in self.temp_dirs:  # made again, as the trial's import would have: its cleanup removes its own
            old = os.path.basename(folder.name)
            suffix = old[11:] if old.startswith("tmp") and len(old) > 11 else f"-{old}"  # "tmp" + 8 random + suffix
            folder._finalizer.detach()  # the server's folder is the server's to remove
            keep_errors = folder._ignore_cleanup_errors
            folder.__init__(suffix, dir=os.path.dirname(folder.name), ignore_cleanup_errors=keep_errors)
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        return _Trial(kind, target)


@dataclass(frozen=True)
class _Trial:
    kind: str
    target: str

    def run(self) -> None:
        """Run the program as its ``__main__``, as ``python -m`` or ``python script`` would."""
        if self.kind == "module":
            runpy.run_module(self.target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(self.target, run_name="__main__")


def _split_path(value: str | None) -> list[str]:
    return [p for p in (value or "").split(os.pathsep) if p]


def _positive(env: Mapping[str, str], *names: str) -> int | None:
    for name in names:
        with contextlib.suppress(ValueError):
            if int(env.get(name, "")) > 0:
                return int(env[name])
    return None


def _apply_thread_counts(env: Mapping[str, str]) -> None:
    """Give torch and OpenBLAS the thread counts a fresh process with ``env`` would start with."""
    torch = sys.modules.get("torch")
    threads = _positive(env, "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    if torch is not None and threads is not None:
        torch.set_num_threads(threads)
    if "numpy" in sys.modules:
        # OpenBLAS's own rule at load: its variables, else OMP_NUM_THREADS, else every core, at most every core.
        cores = len(os.sched_getaffinity(0))
        blas = min(cores, _positive(env, "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS") or cores)
        if blas > 1:
            from threadpoolctl import threadpool_limits

            threadpool_limits(blas, user_api="blas")


def main(argv: list[str] | None = None) -> None:
    """The fork server: import ``--preload``, tell the controller on ``--fd``, then fork a trial per request."""
    parser = argparse.ArgumentParser(prog="python -m gradwatch.sweep.warm", description=__doc__.splitlines()[0])
    parser.add_argument("--fd", type=int, required=True, help="the controller's socket (SOCK_SEQPACKET)")
    parser.add_argument("--parent", type=int, required=True, help="the controller's pid")
    parser.add_argument("--preload", default=",".join(PRELOAD), help="modules to import, comma-separated")
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:  # the controller died before our parent-death signal was set
        return
    server = _Server(socket.socket(fileno=args.fd))
    began = time.perf_counter()
    try:
        os.close(os.pidfd_open(os.getpid()))  # how trials' ends are seen: Linux 5.3 and later
        for name in filter(None, args.preload.split(",")):
            importlib.import_module(name)
    except BaseException as exc:  # an import that fails or exits: the trials import it again, as plain processes
        server.send({"op": "failed", "reason": f"its start failed: {type(exc).__name__}: {exc}"})
        os._exit(0)
    server.preloaded()
    server.send({"op": "ready", "seconds": time.perf_counter() - began})
    trial = server.serve()
    if trial is None:  # the controller is gone or done: atexit cleans up, tearing down torch's modules takes time
        atexit._run_exitfuncs()
        os._exit(0)
    trial.run()


if __name__ == "__main__":
    main()
