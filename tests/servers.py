"""Real servers for the scale-out test, from Debian packages, bound to 127.0.0.1.

PostgreSQL (Dagster's run, event-log and schedule storage), RabbitMQ (the Celery broker)
and dagster-celery workers. Each runs in its own process group on free ports under a
temporary folder and is stopped on exit, also when the test fails; every wait is bounded
in time. ``missing()`` says what is not installed, so the test can skip with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ui_helpers import VENV_BIN, free_port, log_tail, port_open, start_group, stop_group

PG_USER = "big5"
PG_DB = "dagster"
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
EPMD = Path("/usr/bin/epmd")
# Python packages the scale-out deployment needs (the `scale` extra).
PACKAGES = ("dagster_postgres", "dagster_celery", "psycopg2", "kombu")
REQUIRED_ENV = "BIG5_REQUIRE_SCALE_OUT"
"""Set to 1 (.ci/run does, where the servers are installed): the test fails, not skips,
when something it needs is missing."""


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL server's bin folder (initdb, postgres), if installed."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    return Path(found[-1]).parent if found else None


def required() -> bool:
    """Whether the scale-out test must run here (see REQUIRED_ENV)."""
    return os.environ.get(REQUIRED_ENV) == "1"


def missing() -> list[str]:
    """What the scale-out test needs and this machine lacks (empty: it can run)."""
    reasons = []
    if postgres_bin_dir() is None:
        reasons.append("PostgreSQL server (apt-get install postgresql)")
    elif os.geteuid() == 0 and not _user_exists("postgres"):
        reasons.append("a 'postgres' user to run PostgreSQL as (it refuses to run as root)")
    if not RABBITMQ_SERVER.exists() or not EPMD.exists():
        reasons.append("RabbitMQ server (apt-get install rabbitmq-server)")
    for package in PACKAGES:
        if importlib.util.find_spec(package) is None:
            reasons.append(f"Python package {package} (pip install '.[scale]')")
    return reasons


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def wait_for(
    what: str,
    ready: Callable[[], bool],
    timeout_s: float,
    *,
    alive: Callable[[], str | None] = lambda: None,
    interval_s: float = 0.5,
) -> None:
    """Poll ``ready`` until it is true; fail after ``timeout_s`` or when ``alive`` reports
    that the process being waited for has died (it returns the reason, else None)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        dead = alive()
        if dead:
            raise RuntimeError(f"{what}: {dead}")
        try:
            if ready():
                return
        except Exception as e:  # not up yet: connection refused and the like
            last_error = e
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not ready after {timeout_s} s (last error: {last_error})")


def _exited(process: subprocess.Popen, log: Path) -> Callable[[], str | None]:
    def check() -> str | None:
        if process.poll() is None:
            return None
        return f"exited with code {process.returncode}:\n{log_tail(log)}"

    return check


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    database: str

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables the deploy/ instance files read."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": "unused-with-trust-auth",
            "DAGSTER_PG_DB": self.database,
        }

    def connect(self, database: str | None = None):
        import psycopg2

        return psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname=database or self.database,
            connect_timeout=5,
        )

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple]:
        with contextlib.closing(self.connect()) as con, con.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall()


@contextlib.contextmanager
def postgres_server(log_dir: Path, timeout_s: float = 120.0) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (trust auth, 127.0.0.1 only, no fsync) with a
    ``dagster`` database; the server is stopped and its files removed on exit."""
    bin_dir = postgres_bin_dir()
    assert bin_dir is not None, "PostgreSQL is not installed"
    # PostgreSQL refuses to run as root: run it as the Debian 'postgres' user, in a folder
    # it owns (pytest's tmp folders are private to root).
    as_user: dict[str, object] = {}
    root = Path(tempfile.mkdtemp(prefix="big5-pg-"))
    if os.geteuid() == 0:
        as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        shutil.chown(root, "postgres", "postgres")
    data, sockets = root / "data", root / "sockets"
    port = free_port()
    log = log_dir / "postgres.log"
    process: subprocess.Popen | None = None
    try:
        for folder in (data, sockets):
            folder.mkdir(mode=0o700)
            if as_user:
                shutil.chown(folder, "postgres", "postgres")
        init = subprocess.run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=root,
            **as_user,
        )
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    str(bin_dir / "postgres"),
                    "-D",
                    str(data),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(port),
                    "-k",
                    str(sockets),
                    # a test cluster: durability off, enough connections for every process
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ],
                cwd=root,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **as_user,
            )
        server = Postgres(host="127.0.0.1", port=port, user=PG_USER, database=PG_DB)

        def accepts_connections() -> bool:
            server.connect("postgres").close()
            return True

        wait_for("PostgreSQL", accepts_connections, timeout_s, alive=_exited(process, log))
        with contextlib.closing(server.connect("postgres")) as con:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute(f"CREATE DATABASE {PG_DB}")
        yield server
    finally:
        if process is not None:
            stop_group(process, grace_s=20, sig=signal.SIGINT)  # SIGINT: fast shutdown
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class RabbitMQ:
    port: int
    process: subprocess.Popen
    log: Path

    @property
    def url(self) -> str:
        return f"pyamqp://guest:guest@127.0.0.1:{self.port}//"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        wait_for(
            "RabbitMQ",
            lambda: _amqp_ready(self.url),
            timeout_s,
            alive=_exited(self.process, self.log),
        )


@contextlib.contextmanager
def rabbitmq_server(root: Path) -> Iterator[RabbitMQ]:
    """A private RabbitMQ node on 127.0.0.1 (own ports, files, Erlang cookie and epmd),
    booting in the background (``wait_ready`` waits for it); the node and its epmd are
    stopped on exit.

    RabbitMQ requeues a message at once when the connection of the consumer holding it
    unacknowledged drops, so a killed worker's step goes to another worker.
    """
    root.mkdir(parents=True, exist_ok=True)
    port, dist_port, epmd_port = free_port(), free_port(), free_port()
    (root / "enabled_plugins").write_text("[].\n")
    (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    env = {
        **os.environ,
        "HOME": str(root),  # the Erlang cookie goes here, not into the user's home
        "RABBITMQ_NODENAME": f"big5-test-{port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist_port),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "ERL_EPMD_PORT": str(epmd_port),
        "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
        "RABBITMQ_LOG_BASE": str(root / "log"),
        "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
    }
    processes: list[subprocess.Popen] = []
    try:
        # Our own epmd first, in our process group: one that rabbitmq-server starts itself
        # daemonizes and outlives the test.
        epmd_log = root / "epmd.log"
        epmd = start_group([str(EPMD), "-port", str(epmd_port)], env, epmd_log, cwd=root)
        processes.append(epmd)
        wait_for("epmd", lambda: port_open(epmd_port), 30, alive=_exited(epmd, epmd_log))
        log = root / "rabbitmq.log"
        node = start_group([str(RABBITMQ_SERVER)], env, log, cwd=root)
        processes.append(node)
        yield RabbitMQ(port=port, process=node, log=log)
    finally:
        for process in reversed(processes):
            stop_group(process, grace_s=30)


def _amqp_ready(url: str) -> bool:
    from kombu import Connection

    with Connection(url, connect_timeout=2) as connection:
        connection.connect()
        return connection.connected


@dataclass
class CeleryWorker:
    name: str
    process: subprocess.Popen
    log: Path
    workdir: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole worker (the CLI, celery's main process and its pool), as when
        its machine dies: nothing gets to acknowledge or clean up."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def celery_workers(
    names: Sequence[str],
    config_yaml: Path,
    env: Mapping[str, str],
    root: Path,
    *,
    instance_yaml: Path,
    preload: str = "big5_dagster.definitions",
) -> Iterator[dict[str, CeleryWorker]]:
    """`dagster-celery worker start` processes, one step at a time each, every one in its
    own working directory with its own DAGSTER_HOME (a copy of ``instance_yaml``), as on
    separate machines. Started at once (``wait_until_consuming`` waits); stopped on exit."""
    workers: dict[str, CeleryWorker] = {}
    try:
        for name in names:
            workdir = root / name
            home = workdir / "dagster_home"
            home.mkdir(parents=True, exist_ok=True)
            shutil.copy(instance_yaml, home / "dagster.yaml")
            log = workdir / "worker.log"
            command = [
                str(VENV_BIN / "dagster-celery"),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                str(config_yaml),
                "-n",
                name,
                # import the code location before consuming, so a step's time is its work
                "-i",
                preload,
                "--",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
            ]
            worker_env = {
                **env,
                "DAGSTER_HOME": str(home),
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            }
            process = start_group(command, worker_env, log, cwd=workdir)
            workers[name] = CeleryWorker(name, process, log, workdir)
        yield workers
    finally:
        for worker in workers.values():
            stop_group(worker.process, grace_s=10)


def wait_until_consuming(workers: Mapping[str, CeleryWorker], timeout_s: float = 420.0) -> None:
    """Wait until every worker has loaded the code and consumes from the broker."""
    for worker in workers.values():
        wait_for(
            f"celery worker {worker.name}",
            lambda w=worker: " ready." in w.log.read_text(errors="replace"),
            timeout_s,
            alive=_exited(worker.process, worker.log),
        )
