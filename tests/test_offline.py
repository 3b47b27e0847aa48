"""The test session cannot reach the network; loopback stays usable for the UI tests."""

import socket

import pytest
from conftest import NetworkAccessError


def test_non_loopback_connections_fail():
    with socket.socket() as sock, pytest.raises(NetworkAccessError):
        sock.connect(("10.255.255.1", 443))


def test_loopback_connections_are_allowed():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.socket() as client:
            client.connect(server.getsockname())
