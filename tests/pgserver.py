"""A PostgreSQL database for the test suite, private to one test run.

When ``UOW_TEST_POSTGRES_URL`` is set the tests use that server; otherwise a
throwaway server is started from the PostgreSQL binaries found on this machine
(``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``, then ``PATH``), in a
temporary directory under ``/tmp``, and stopped and deleted at the end. As root
the data directory is handed to the ``postgres`` user and the server commands run
through ``runuser -u postgres --`` (PostgreSQL refuses to run as root).

Either way the tests work in a database of their own, created with a random name
and dropped at the end, so a long-lived server sees nothing stale and keeps
nothing. Typical use in a fixture::

    with pgserver.postgres_database() as url:
        yield url

Session-wide use: :func:`postgres_url` starts one server and database for the
whole process (cleaned up by :func:`stop` or at exit), and
:func:`postgres_unavailable_reason` says why there is none. With ``CI=true`` a
missing server should fail the run; elsewhere the tests skip with the reason:
:func:`require_postgres` does exactly that.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

URL_VARIABLE = "UOW_TEST_POSTGRES_URL"
BINDIR_VARIABLE = "UOW_TEST_POSTGRES_BINDIR"
START_TIMEOUT = 30

T = TypeVar("T")


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL could be reached or started; the message says why."""


# --- finding and running the server binaries ---------------------------------


def _has_server_binaries(directory: str) -> bool:
    return all(os.access(os.path.join(directory, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres"))


def _version_key(directory: str) -> tuple[int, ...]:
    match = re.search(r"/postgresql/([\d.]+)/", directory)
    return tuple(int(p) for p in match.group(1).split(".")) if match else ()


def find_bindir() -> str:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``."""
    candidates: list[str] = []
    if os.environ.get(BINDIR_VARIABLE):
        candidates.append(os.environ[BINDIR_VARIABLE])
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(out.stdout.strip())
    candidates.extend(sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(os.path.dirname(on_path))
    for directory in candidates:
        if directory and _has_server_binaries(directory):
            return directory
    looked = ", ".join(dict.fromkeys(c for c in candidates if c)) or "nowhere"
    raise PostgresUnavailable(
        f"no PostgreSQL server binaries (initdb, pg_ctl, postgres) found (looked in: {looked}); "
        f"install the server package (e.g. apt-get install postgresql) or set {URL_VARIABLE}"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class LocalServer:
    """A PostgreSQL server in a temporary directory; :meth:`start`, then :meth:`stop`."""

    def __init__(self, bindir: str | None = None):
        self.bindir = bindir or find_bindir()
        self.root = tempfile.mkdtemp(prefix="uow-pg-", dir="/tmp")
        self.data_dir = os.path.join(self.root, "data")
        self.socket_dir = os.path.join(self.root, "socket")
        self.log_file = os.path.join(self.root, "server.log")
        self.port = 0
        self.prefix: list[str] = []
        os.makedirs(self.socket_dir)
        if os.geteuid() == 0:
            self._run_as_postgres_user()

    def _run_as_postgres_user(self) -> None:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root, and PostgreSQL refuses to run as root, but there is no 'postgres' user "
                "to run it as; create one or run the tests as another user"
            ) from None
        runuser = shutil.which("runuser")
        if runuser is None:
            raise PostgresUnavailable("running as root but runuser is not available to start PostgreSQL")
        for path in (self.root, self.socket_dir):
            os.chown(path, account.pw_uid, account.pw_gid)
        self.prefix = [runuser, "-u", "postgres", "--"]

    def _command(self, program: str, *args: str) -> None:
        command = [*self.prefix, os.path.join(self.bindir, program), *args]
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 10,
            env={**os.environ, "LC_ALL": "C"},
            cwd="/tmp",
        )
        if result.returncode != 0:
            log = ""
            with contextlib.suppress(OSError), open(self.log_file) as handle:
                log = handle.read()[-2000:]
            raise PostgresUnavailable(
                f"{' '.join(command)} failed ({result.returncode}): {(result.stderr or result.stdout).strip()}"
                + (f"\nserver log:\n{log}" if log else "")
            )

    def start(self) -> str:
        """Initialise and start the server; return its base URL."""
        initdb = ("initdb", "-D", self.data_dir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        try:
            # a UTF-8 character type, so ILIKE and lower() fold non-ASCII letters as Python does
            self._command(*initdb, "--locale=C.UTF-8")
        except PostgresUnavailable:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self._command(*initdb)
        last_error: PostgresUnavailable | None = None
        for _ in range(3):  # the free port may be taken between choosing it and binding it
            self.port = _free_port()
            options = (
                f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            try:
                self._command(
                    "pg_ctl", "-D", self.data_dir, "-w", "-t", str(START_TIMEOUT), "-o", options,
                    "-l", self.log_file, "start",
                )  # fmt: skip
                # a private server without TLS: no TLS negotiation on connects and cancel requests
                return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"
            except PostgresUnavailable as exc:
                last_error = exc
        assert last_error is not None
        raise last_error

    def stop(self) -> None:
        """Stop the server (immediately: its data is thrown away) and delete its directory."""
        try:
            if os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
                with contextlib.suppress(PostgresUnavailable, subprocess.SubprocessError, OSError):
                    self._command("pg_ctl", "-D", self.data_dir, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


# --- one database per test run ------------------------------------------------


def _run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion, from sync code, even inside a running loop."""

    async def main() -> T:
        return await make()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


async def _admin(url: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(_with_database(url, "postgres"), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def create_database(server_url: str) -> str:
    """Create a database with a random name on the server; return its URL."""
    name = f"uow_test_{secrets.token_hex(6)}"
    try:
        _run_async(lambda: _admin(server_url, f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        raise PostgresUnavailable(f"cannot create a test database on {_redacted(server_url)}: {exc!r}") from exc
    return _with_database(server_url, name)


def drop_database(database_url: str) -> None:
    """Drop the database of ``database_url``, disconnecting anyone still in it."""
    name = urlsplit(database_url).path.lstrip("/")
    _run_async(lambda: _admin(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A URL to a fresh, empty database, on ``UOW_TEST_POSTGRES_URL`` or on a
    server started for the occasion; everything is removed on exit.

    Raises :class:`PostgresUnavailable` when neither is possible.
    """
    configured = os.environ.get(URL_VARIABLE)
    server: LocalServer | None = None
    try:
        if configured:
            server_url = configured
        else:
            server = LocalServer()
            server_url = server.start()
        database_url = create_database(server_url)
        try:
            yield database_url
        finally:
            with contextlib.suppress(Exception):
                drop_database(database_url)
    finally:
        if server is not None:
            server.stop()


# --- one database for the whole process ----------------------------------------

_lock = threading.Lock()
_shared: contextlib.ExitStack | None = None
_shared_url: str | None = None
_shared_error: PostgresUnavailable | None = None


def postgres_url() -> str:
    """The URL of this process's test database, set up on first call.

    Raises :class:`PostgresUnavailable` (every time, without retrying) when it
    cannot be had.
    """
    global _shared, _shared_url, _shared_error
    with _lock:
        if _shared_url is not None:
            return _shared_url
        if _shared_error is not None:
            raise _shared_error
        stack = contextlib.ExitStack()
        try:
            _shared_url = stack.enter_context(postgres_database())
        except PostgresUnavailable as exc:
            _shared_error = exc
            raise
        except Exception as exc:
            _shared_error = PostgresUnavailable(f"cannot set up PostgreSQL for the tests: {exc!r}")
            raise _shared_error from exc
        _shared = stack
        atexit.register(stop)
        return _shared_url


def postgres_unavailable_reason() -> str | None:
    """Why there is no test database, or ``None`` when :func:`postgres_url` works."""
    try:
        postgres_url()
    except PostgresUnavailable as exc:
        return str(exc)
    return None


def stop() -> None:
    """Drop the process's test database and stop its server, if any."""
    global _shared, _shared_url
    with _lock:
        stack, _shared, _shared_url = _shared, None, None
    if stack is not None:
        stack.close()


def in_ci() -> bool:
    """Whether the run is in CI, where a missing PostgreSQL is a failure, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> Any:
    """Fail (in CI) or skip (elsewhere) the calling test, giving ``reason``."""
    import pytest

    message = f"PostgreSQL is not available: {reason}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_postgres() -> str:
    """:func:`postgres_url`, or fail/skip the calling test with the reason."""
    try:
        return postgres_url()
    except PostgresUnavailable as exc:
        return unavailable(str(exc))  # type: ignore[no-any-return]


__all__ = [
    "LocalServer",
    "PostgresUnavailable",
    "create_database",
    "drop_database",
    "find_bindir",
    "in_ci",
    "postgres_database",
    "postgres_unavailable_reason",
    "postgres_url",
    "require_postgres",
    "stop",
    "unavailable",
]
