"""Run the pipeline the way a user does: Dagster webserver + daemon and CLI processes.

Shared by the UI and reliability tests. Everything binds to 127.0.0.1 and runs against a
temporary DAGSTER_HOME, data dir and a small BIG5_CONFIG on the tiny random model.
Processes start in their own process group, so teardown reaches the children Dagster
spawns (code servers, run workers) even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from big5_dagster.dagster_home import prepare_dagster_home

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
]
LOCATION = "big5_dagster"
REPOSITORY = "__repository__"
ASSET_JOB = "__ASSET_JOB"
PARTITION_TAG = "dagster/partition"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}
# Talk to 127.0.0.1 directly even when the environment names an HTTP proxy.
LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Small settings on top of the tiny profile: a few seconds of work per asset.
N_SCENARIOS = 6
SMALL_SETTINGS: dict[str, Any] = {
    "posts": {"n_posts": 600},
    "scenarios": {"n_scenarios": N_SCENARIOS},
    "experts": {
        "max_examples": 16,
        "max_length": 48,
        "gate_prefixes": 4,
        "gate_max_new_tokens": 4,
    },
    "dialogues": {"opener_max_new_tokens": 6, "max_new_tokens": 5, "batch_size": 2},
}
# Settings section -> the ops (assets, checks) whose Config is that section.
SECTION_OPS = {
    "posts": ["psychgenerator_posts"],
    "scenarios": ["soda_scenarios"],
    "experts": ["trait_experts", "trait_experts_expert_quality_gate"],
    "dialogues": ["scenario_openers", "big5_chat_replies"],
}


def write_small_config(
    path: Path, model_dir: Path, executor: str = "in_process", **top_level: Any
) -> Path:
    """A BIG5_CONFIG file: the tiny profile, the tiny model folder and SMALL_SETTINGS
    (``top_level``: more top-level settings, e.g. warehouse_writes).

    The in-process executor saves each run a second import of the definitions (about
    15 s of CPU here); the separate processes under test give the parallelism.
    """
    settings = {
        "extends": "tiny",
        "executor": executor,
        **top_level,
        "model": {"base_model": str(model_dir), "device": "cpu"},
        **SMALL_SETTINGS,
    }
    path.write_text(yaml.safe_dump(settings, sort_keys=False))
    return path


def small_run_config(*ops: str) -> dict[str, Any]:
    """Run config giving ``ops`` the SMALL_SETTINGS (for in-process dg.materialize, whose
    Config defaults were fixed when the definitions were imported)."""
    config: dict[str, Any] = {}
    for section, names in SECTION_OPS.items():
        for name in names:
            if name in ops:
                config[name] = {"config": SMALL_SETTINGS[section]}
    return {"ops": config}


def write_dagster_home(home: Path) -> Path:
    """A DAGSTER_HOME with the project's instance file (no telemetry, library logs in the run
    log), storages created, whose queued runs start within a second."""
    prepare_dagster_home(
        home,
        extra={
            "run_coordinator": {
                "module": "dagster._core.run_coordinator",
                "class": "QueuedRunCoordinator",
                "config": {"dequeue_interval_seconds": 1},
            },
            # loading big5_dagster.definitions takes 15-40 s on a busy 2-core machine
            "code_servers": {"local_startup_timeout": 300},
        },
    )
    # Create the SQLite storages now: a webserver and a daemon starting together on an
    # empty home both stamped the schema ("alembic_version has more than one head").
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)):
        pass
    return home


def materialize_dialogue_inputs(
    data_dir: Path, home: Path, config: Path, traits: Sequence[str]
) -> None:
    """Corpora, openers and the experts of ``traits``, small, in-process into ``data_dir``
    and the instance at ``home``: what big5_chat_replies of those traits' personas reads."""
    import dagster as dg
    import torch

    from big5_dagster.config import load_settings
    from big5_dagster.definitions import build_definitions

    defs = build_definitions(load_settings(config_file=config), data_dir)
    steps = [
        (["psychgenerator_posts", "soda_scenarios"], None),
        (["scenario_openers"], None),
        *((["trait_experts"], trait) for trait in traits),
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see pipeline_env: threads only slow the tiny model down
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for selection, partition in steps:
                dg.materialize(
                    list(defs.assets),  # without the experts' quality gate: no classifier here
                    selection=selection,
                    instance=instance,
                    resources=defs.resources,
                    partition_key=partition,
                    run_config=small_run_config(*selection),
                )
    finally:
        torch.set_num_threads(threads)


def pipeline_env(data_dir: Path, home: Path, config: Path) -> dict[str, str]:
    """The environment of a pipeline process: this data dir, instance and config, offline."""
    env = {k: v for k, v in os.environ.items() if k not in ("BIG5_PROFILE",)}
    env.update(
        BIG5_DATA_DIR=str(data_dir),
        DAGSTER_HOME=str(home),
        BIG5_CONFIG=str(config),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        # The tiny model gains nothing from threads, and two torch threads on a busy
        # 2-core machine made generation 20x slower (each waits on the other's core).
        OMP_NUM_THREADS="1",
    )
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_group(
    cmd: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path = REPO_ROOT
) -> subprocess.Popen:
    """Start ``cmd`` as the leader of a new process group, output to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_group(proc: subprocess.Popen, grace_s: float = 20.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to the process group, wait, then SIGKILL whatever of the group is left."""
    if proc.poll() is None:
        _signal_group(proc, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    _signal_group(proc, signal.SIGKILL)  # children (code server, run workers) too
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "<no log>"


class GraphQLError(RuntimeError):
    pass


@dataclass
class DagsterServices:
    """A running dagster-webserver and dagster-daemon on one DAGSTER_HOME."""

    url: str
    env: dict[str, str]
    logs: dict[str, Path]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with LOCAL_HTTP.open(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("errors"):
            raise GraphQLError(json.dumps(answer["errors"], indent=1))
        return answer["data"]

    def describe(self) -> str:
        """Process states and log tails, for assertion messages."""
        parts = []
        for name, proc in self.processes.items():
            parts.append(f"--- {name} (exit code {proc.poll()}) ---\n{log_tail(self.logs[name])}")
        return "\n".join(parts)

    def launch_assets(
        self,
        assets: Sequence[str],
        partition: str | None = None,
        checks: Sequence[tuple[str, str]] | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> str:
        """Launch a run of the asset job over GraphQL; ``checks`` None = the assets' checks."""
        selector: dict[str, Any] = {
            "repositoryLocationName": LOCATION,
            "repositoryName": REPOSITORY,
            "jobName": ASSET_JOB,
            "assetSelection": [{"path": [a]} for a in assets],
        }
        if checks is not None:
            selector["assetCheckSelection"] = [
                {"assetKey": {"path": [asset]}, "name": name} for asset, name in checks
            ]
        tags = [{"key": PARTITION_TAG, "value": partition}] if partition else []
        data = self.graphql(
            LAUNCH_RUN,
            {
                "params": {
                    "selector": selector,
                    "runConfigData": dict(run_config or {}),
                    "mode": "default",
                    "executionMetadata": {"tags": tags},
                }
            },
        )
        result = data["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise GraphQLError(f"launchRun failed: {json.dumps(result, indent=1)}")
        return result["run"]["runId"]

    def run_status(self, run_id: str) -> str:
        data = self.graphql(RUN_STATUS, {"runId": run_id})
        return data["runOrError"]["status"]

    def wait_for_run(self, run_id: str, timeout_s: float = 420.0) -> str:
        """The run's final status; fails with the logs if it is still going at the timeout."""
        deadline = time.monotonic() + timeout_s
        status = "?"
        while time.monotonic() < deadline:
            status = self.run_status(run_id)
            if status in FINISHED:
                return status
            time.sleep(1.0)
        raise TimeoutError(f"run {run_id} still {status} after {timeout_s} s\n{self.describe()}")

    def run_failure(self, run_id: str) -> str:
        """The error events of a run, for a failing assertion's message."""
        data = self.graphql(RUN_ERRORS, {"runId": run_id})
        events = data["logsForRun"].get("events", [])
        messages = []
        for event in events:
            if event.get("level") in ("ERROR", "CRITICAL"):
                messages.append(event.get("message", ""))
            error = event.get("error")
            while error:  # the step's error, then what caused it
                messages.append(error["message"])
                error = error.get("cause")
        return "\n".join(messages) or self.describe()


LAUNCH_RUN = """
mutation LaunchRun($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message stack }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on UnauthorizedError { message }
  }
}
"""
RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) { __typename ... on Run { status } }
}
"""
RUN_ERRORS = """
query RunErrors($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message level }
        ... on ExecutionStepFailureEvent { error { message cause { message } } }
      }
    }
  }
}
"""
LOCATION_STATUS = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def _wait_until(what: str, ready, timeout_s: float, services: DagsterServices) -> None:
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        for name, proc in services.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited while waiting for {what}\n{services.describe()}")
        try:
            if ready():
                return
        except (OSError, urllib.error.URLError, GraphQLError, KeyError) as e:
            last_error = e
        time.sleep(1.0)
    raise TimeoutError(
        f"{what} not ready after {timeout_s} s ({last_error})\n{services.describe()}"
    )


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def _location_loaded(services: DagsterServices) -> bool:
    data = services.graphql(LOCATION_STATUS)
    (entry,) = [e for e in data["workspaceOrError"]["locationEntries"] if e["name"] == LOCATION]
    error = entry["locationOrLoadError"]
    if error and error["__typename"] == "PythonError":
        raise RuntimeError(f"code location failed to load: {error['message']}")
    return entry["loadStatus"] == "LOADED" and error is not None


@contextlib.contextmanager
def dagster_services(
    env: Mapping[str, str],
    log_dir: Path,
    startup_timeout_s: float = 420.0,
    shared_code_server: bool = False,
) -> Iterator[DagsterServices]:
    """dagster-webserver (127.0.0.1, a free port) and dagster-daemon on ``env``'s
    DAGSTER_HOME, loaded from the repo's workspace.yaml; all are stopped on exit.

    ``shared_code_server``: one `dagster api grpc` code server serves both (and launches the
    runs), instead of one each: the definitions are imported once less (15-40 s of CPU here).
    """
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    services = DagsterServices(
        url=f"http://127.0.0.1:{port}",
        env=dict(env),
        logs={name: log_dir / f"{name}.log" for name in ("code_server", "webserver", "daemon")},
    )
    workspace = "workspace.yaml"
    try:
        if shared_code_server:
            grpc_port = free_port()
            workspace_file = log_dir / "workspace.yaml"
            workspace_file.write_text(
                yaml.safe_dump(
                    {
                        "load_from": [
                            {
                                "grpc_server": {
                                    "host": "127.0.0.1",
                                    "port": grpc_port,
                                    "location_name": LOCATION,
                                }
                            }
                        ]
                    }
                )
            )
            workspace = str(workspace_file)
            services.processes["code_server"] = start_group(
                [
                    str(VENV_BIN / "dagster"),
                    "api",
                    "grpc",
                    "-m",
                    "big5_dagster.definitions",
                    "--location-name",
                    LOCATION,
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(grpc_port),
                ],
                env,
                services.logs["code_server"],
            )
            _wait_until(
                "the code server", lambda: port_open(grpc_port), startup_timeout_s, services
            )
        commands = {
            "webserver": [
                str(VENV_BIN / "dagster-webserver"),
                "-w",
                workspace,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            "daemon": [str(VENV_BIN / "dagster-daemon"), "run", "-w", workspace],
        }
        for name, cmd in commands.items():
            services.processes[name] = start_group(cmd, env, services.logs[name])
        _wait_until(
            "the webserver",
            lambda: LOCAL_HTTP.open(f"{services.url}/server_info", timeout=5).status == 200,
            startup_timeout_s,
            services,
        )
        _wait_until("the code location", lambda: _location_loaded(services), 120, services)
        # skip the first-visit dialog in the browser
        services.graphql("mutation { setNuxSeen }")
        yield services
    finally:
        for proc in reversed(services.processes.values()):
            stop_group(proc)
