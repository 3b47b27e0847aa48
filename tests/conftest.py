"""Shared fixtures: every test runs offline against a temporary data dir and DAGSTER_HOME."""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest
import torch
from model_fixtures import *  # noqa: F401,F403  (tiny random-weight model with the real tokenizer)

from big5_dagster.dagster_home import prepare_dagster_home

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: torch's default (a thread per core) in each would oversubscribe
    # them, and spinning threads on a busy core run several times slower. Subprocesses the
    # tests start (webserver, daemon, dbt) inherit the limit through the environment.
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1)))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path, monkeypatch):
    """Nothing a test does touches assets_data/ of the checkout or the network."""
    data = tmp_path / "data"
    home = tmp_path / "dagster_home"
    prepare_dagster_home(home)  # the instance file `big5 demo` and `make ui` write
    monkeypatch.setenv("BIG5_DATA_DIR", str(data))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("BIG5_CONFIG", raising=False)
    monkeypatch.delenv("BIG5_PROFILE", raising=False)
    yield data


class NetworkAccessError(RuntimeError):
    """A test tried to reach a non-loopback address: the tiny profile must run offline."""


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like are local
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it would already be network access
        return False


def _guarded_connect(self, address):
    if not _is_loopback(address):
        raise NetworkAccessError(f"network access attempted: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_loopback(address):
        raise NetworkAccessError(f"network access attempted: {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True, scope="session")
def socket_guard():
    """Fail any connection to a non-loopback address for the whole test session."""
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex
    yield
    socket.socket.connect = _real_connect
    socket.socket.connect_ex = _real_connect_ex
