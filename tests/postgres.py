"""A throwaway PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` in a temporary folder, on a unix socket only.

The programs come from Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``; ``.ci/run`` installs
it) or from ``PATH``. The server listens on no TCP port, trusts local connections, and skips every fsync: it holds
test databases for a few seconds. ``initdb`` refuses to run as root, so under root the server runs as the
``postgres`` user (which the package creates), else as ``nobody``.

    with Server() as server:
        url = server.create_database("sweep")  # postgresql://postgres@/sweep?host=/tmp/gw-pg-...&port=5432
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

#: The socket file is ``<folder>/.s.PGSQL.<port>``; each server has its own folder, so any port number will do.
PORT = 5432


def programs() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: ``PATH``'s first, else the newest Debian version's."""
    initdb = shutil.which("initdb")
    if initdb is not None and shutil.which("pg_ctl") is not None:
        return Path(initdb).resolve().parent
    found = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    return max(found, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, default=None)


def unavailable() -> str | None:
    """Why no server can be started here (a line saying what to install), or ``None``."""
    if programs() is None:
        return "PostgreSQL's initdb / pg_ctl not found: apt-get install postgresql (CI installs it)"
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed: .venv/bin/pip install -e '.[dev]' (or the 'postgres' extra)"
    if os.geteuid() == 0 and _server_user() is None:
        return "running as root, and there is neither a 'postgres' nor a 'nobody' user to run the server as"
    return None


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged user a root process runs the server as."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


class Server:
    """A PostgreSQL server in a temporary folder, stopped and deleted on exit."""

    def __init__(self) -> None:
        self.bin = programs()
        # Under /tmp, not pytest's deeper tmp_path: a unix socket's path may be at most 107 bytes long.
        self.folder = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.folder / "data"
        self._user: dict = {}
        if os.geteuid() == 0:
            user = _server_user()
            os.chown(self.folder, user.pw_uid, user.pw_gid)
            self._user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def __enter__(self) -> Server:
        try:
            self._run("initdb", "-D", self.data, "--auth=trust", "--username=postgres", "--encoding=UTF8", "--no-sync")
            options = f"-c listen_addresses='' -k {self.folder} -p {PORT} -c fsync=off -c synchronous_commit=off"
            self._run("pg_ctl", "start", "--wait", "-D", self.data, "-l", self.folder / "server.log", "-o", options)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "--mode=immediate", "--wait", "-D", self.data, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: object, check: bool = True) -> None:
        command = [str(self.bin / program), *map(str, args)]
        done = subprocess.run(command, cwd=self.folder, capture_output=True, text=True, **self._user)
        if check and done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}")

    def url(self, database: str) -> str:
        """The URL a user gives ``--storage``: the socket's folder and port as libpq's query parameters."""
        return f"postgresql://postgres@/{database}?host={self.folder}&port={PORT}"

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` and return its URL."""
        import psycopg

        with psycopg.connect(
            host=str(self.folder), port=PORT, user="postgres", dbname="postgres", autocommit=True
        ) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
