"""A local PostgreSQL server the project starts itself when no database URL is configured.

The server's files live in one directory (by default `.ledger/pg` in the working folder) and it is
reused across runs: `ensure_server()` starts it if it is not running and returns its URL.

Binaries come from, in order: `LEDGER_PG_BIN` (passed in by the edge that reads the environment), the
`pg_ctl` on PATH, the newest `/usr/lib/postgresql/*/bin`, and the `pgserver` wheel if installed.
PostgreSQL refuses to run as root, so when we are root the server runs as the `postgres` system user
(created if missing) and owns only its data directory; where it cannot reach the working folder (a
`mktemp -d` or home directory, mode 700), the cluster lives under /var/lib/ledger-local-pg instead and
`.ledger/pg.location` names it. The server listens on 127.0.0.1 only, with
`trust` authentication: it is a development server, never a production one.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ledger_core.errors import LocalServerError

SERVER_USER = "postgres"
START_ATTEMPTS = 4


@dataclass(frozen=True)
class LocalServer:
    """A running local server: where its files are and where it listens."""

    data_dir: Path
    port: int
    started: bool = False  # by this call (else it was running already)
    initialised: bool = False  # a new, empty cluster was made by this call

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def __eq__(self, other: object) -> bool:  # the same server, however it was found
        return isinstance(other, LocalServer) and (self.data_dir, self.port) == (other.data_dir, other.port)

    def __hash__(self) -> int:
        return hash((self.data_dir, self.port))


def find_bin_dir(explicit: str | None = None) -> Path:
    """Return the directory holding `initdb`, `pg_ctl` and `postgres`."""
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(system)
    # The pgserver wheel ships a PostgreSQL build: the fallback on machines without one. Located, not imported.
    spec = importlib.util.find_spec("pgserver")
    if spec and spec.submodule_search_locations:
        candidates.extend(Path(p) / "pginstall" / "bin" for p in spec.submodule_search_locations)
    for directory in candidates:
        if (directory / "pg_ctl").exists() and (directory / "initdb").exists():
            return directory
    raise LocalServerError(
        "no PostgreSQL binaries found (looked at LEDGER_PG_BIN, PATH, /usr/lib/postgresql/*/bin, "
        "the pgserver wheel); install PostgreSQL or set LEDGER_DATABASE_URL"
    )


def _as_server_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USER], check=True,
                       stdin=subprocess.DEVNULL)
    return ["runuser", "-u", SERVER_USER, "--"]


def _chown_to_server_user(path: Path) -> None:
    if os.geteuid() != 0:
        return
    entry = pwd.getpwnam(SERVER_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL binds: connections of the previous run left in TIME_WAIT do not make the port taken
        # (without this, an unclean stop moved the server to a new port and broke pinned URLs).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _running_port(data_dir: Path) -> int | None:
    """The port of the server running on `data_dir`, read from its postmaster.pid, if it is alive."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, IndexError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by the server user
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        if sock.connect_ex(("127.0.0.1", port)) != 0:
            return None
    return port


def _process_gone(pid: int) -> bool:
    """No such process, or a zombie (dead, not yet reaped): either way it holds nothing."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def _clear_stale_lock(data_dir: Path) -> None:
    """After an unclean stop (kill -9, a crash) postmaster.pid may name a dead postmaster; PostgreSQL refuses to
    start while that PID exists, and a zombie's does until it is reaped. Remove such a lock file."""
    pid_file = data_dir / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return
    if _process_gone(pid):
        pid_file.unlink(missing_ok=True)


def _run(cmd: list[str], what: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise LocalServerError(f"{what} failed: {detail[-1] if detail else result.returncode}")


def _init(bin_dir: Path, data_dir: Path, durable: bool) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    _chown_to_server_user(data_dir)
    _run(
        [*_as_server_user(), str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SERVER_USER,
         "--auth=trust", "-E", "UTF8", "--no-locale"],
        "initdb",
    )
    settings = [
        "listen_addresses = '127.0.0.1'",
        "unix_socket_directories = ''",
        "max_connections = 200",
        "shared_buffers = 256MB",
        "timezone = 'UTC'",
    ]
    if not durable:
        # Throwaway test servers: durability buys nothing and costs seconds of fsync.
        settings += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
    with open(data_dir / "postgresql.conf", "a") as conf:
        conf.write("\n# ledger local server\n" + "\n".join(settings) + "\n")


# Where a cluster lives when the server user cannot reach the folder asked for (see _reachable_data_dir).
FALLBACK_ROOT = Path("/var/lib/ledger-local-pg")


def _reachable_data_dir(data_dir: Path) -> Path:
    """`data_dir`, or a fixed stand-in for it when the server user cannot search one of its parents.

    As root, the server runs as `postgres`, which must reach its data directory through every parent. A
    folder such as `mktemp -d` (mode 700) or a home directory blocks it; rather than loosen permissions the
    user chose, the cluster then lives under FALLBACK_ROOT at a path derived from the requested one (so it
    is found again next time), and `<data_dir>.location` beside the requested path says where.
    """
    data_dir = data_dir.resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return data_dir
    if all(os.stat(parent).st_mode & 0o001 for parent in data_dir.parent.parents):
        os.chmod(data_dir.parent, 0o755)  # `.ledger` itself is ours to open to the server user
        return data_dir
    fallback = FALLBACK_ROOT / hashlib.sha256(str(data_dir).encode()).hexdigest()[:16] / data_dir.name
    fallback.parent.mkdir(parents=True, exist_ok=True)
    for folder in (FALLBACK_ROOT, fallback.parent):
        os.chmod(folder, 0o755)
    (data_dir.parent / (data_dir.name + ".location")).write_text(f"{fallback}\n")
    return fallback


def ensure_server(
    data_dir: Path, *, bin_dir: str | None = None, durable: bool = True, preferred_port: int | None = None
) -> LocalServer:
    """Start the server on `data_dir` unless it is already running; initialise it on first use."""
    data_dir = _reachable_data_dir(data_dir)
    lock_path = data_dir.parent / (data_dir.name + ".lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes starting the same server at once
        port = _running_port(data_dir)
        if port is not None:
            return LocalServer(data_dir, port)
        binaries = find_bin_dir(bin_dir)
        initialised = not (data_dir / "PG_VERSION").exists()
        if initialised:
            _init(binaries, data_dir, durable)
        port_file = data_dir.parent / (data_dir.name + ".port")
        port = preferred_port or (int(port_file.read_text()) if port_file.exists() else 0)
        if not port or not _port_is_free(port):
            port = _free_port()
        port_file.write_text(str(port))
        log_file = data_dir.parent / (data_dir.name + ".log")
        log_file.touch()
        _chown_to_server_user(log_file)
        for attempt in range(1, START_ATTEMPTS + 1):
            _clear_stale_lock(data_dir)
            try:
                _run(
                    [*_as_server_user(), str(binaries / "pg_ctl"), "-D", str(data_dir), "-l", str(log_file),
                     "-o", f"-p {port}", "-w", "-t", "60", "start"],
                    f"starting PostgreSQL on {data_dir} (log: {log_file})",
                )
                break
            except LocalServerError:
                # Backends orphaned by an unclean stop exit on their own within moments, releasing shared memory.
                if attempt == START_ATTEMPTS:
                    raise
                time.sleep(attempt)
        return LocalServer(data_dir, port, started=True, initialised=initialised)


def locate(data_dir: Path) -> Path:
    """Where the cluster asked for at `data_dir` really lives (no side effects: nothing is created)."""
    data_dir = data_dir.resolve()
    location = data_dir.parent / (data_dir.name + ".location")
    return Path(location.read_text().strip()) if location.exists() else data_dir


@dataclass(frozen=True)
class ServerStatus:
    requested: Path  # the data directory asked for
    data_dir: Path  # where it lives
    exists: bool
    port: int | None  # listening on, if running

    def to_json(self) -> dict[str, object]:
        return {"dataDir": str(self.data_dir), "requestedDataDir": str(self.requested), "exists": self.exists,
                "running": self.port is not None, "port": self.port,
                "url": f"postgresql://{SERVER_USER}@127.0.0.1:{self.port}/" if self.port else None}


def server_status(data_dir: Path) -> ServerStatus:
    found = locate(data_dir)
    return ServerStatus(data_dir.resolve(), found, (found / "PG_VERSION").exists(), _running_port(found))


def stop_server(data_dir: Path, *, bin_dir: str | None = None) -> bool:
    """Stop the server on `data_dir` if it runs (fast shutdown); whether it was running."""
    data_dir = locate(data_dir)
    if _running_port(data_dir) is None:
        return False
    _run(
        [*_as_server_user(), str(find_bin_dir(bin_dir) / "pg_ctl"), "-D", str(data_dir),
         "-m", "fast", "-w", "stop"],
        "stopping PostgreSQL",
    )
    return True


def local_clusters(home: Path) -> list[Path]:
    """Every cluster the project keeps under `home/.ledger` (the ledger's, the benchmarks'), as requested."""
    folder = (home / ".ledger").resolve()
    if not folder.is_dir():
        return []
    found = {p.with_suffix("") for p in folder.glob("*.location")}
    found |= {p for p in folder.iterdir() if p.is_dir() and (p / "PG_VERSION").exists()}
    return sorted(found)


def remove_server(data_dir: Path, *, bin_dir: str | None = None) -> list[Path]:
    """Stop the server on `data_dir` and delete its files wherever they live; return what was removed."""
    requested, real = data_dir.resolve(), locate(data_dir)
    stop_server(data_dir, bin_dir=bin_dir)
    removed = []
    # Beside the requested path (its .location) and beside where it really lives (.port, .log, .lock).
    siblings = {folder.parent / (folder.name + suffix) for folder in (requested, real)
                for suffix in (".location", ".port", ".log", ".lock")}
    for path in [real, requested, *sorted(siblings)]:
        if path.is_dir():
            shutil.rmtree(path)
            removed.append(path)
        elif path.exists():
            path.unlink()
            removed.append(path)
    if real != requested and real.parent.parent == FALLBACK_ROOT and not any(real.parent.iterdir()):
        real.parent.rmdir()
    return removed
