"""Fixtures of the multihost tests: the hosts, and the deployment on them.

Without root, network namespaces or the programs the hosts run, the tests skip with the
reason; with ``CI=true`` they fail instead, like the ``redis`` and ``postgres`` tests.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from bench.netns import Network, missing_requirements

from .processes import (
    HostServer,
    PrivatePostgres,
    PrivateRedis,
    missing_programs,
    seed,
    server_env,
)

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


@pytest.fixture
def network() -> Iterator[Network]:
    """Three hosts on one bridge: ``data`` (.10), ``web1`` (.21), ``web2`` (.22); the
    root namespace (the test's clients) is .1. Removed afterwards, also on failure."""
    missing = missing_requirements() + missing_programs()
    if missing:
        reason = "; ".join(missing)
        if IN_CI:
            pytest.fail(f"CI=true but {reason}", pytrace=False)
        pytest.skip(reason)
    with Network() as net:
        net.add_host("data", 10)
        net.add_host("web1", 21)
        net.add_host("web2", 22)
        yield net


@dataclass
class Deployment:
    """What runs on the hosts: Redis and PostgreSQL on ``data``, a server per web host
    (not started), and the seeded wedding (``topic``, a token per vendor)."""

    network: Network
    redis: PrivateRedis
    database: PrivatePostgres
    servers: dict[str, HostServer]
    topic: str
    tokens: list[str]


@pytest.fixture
def vendors() -> int:
    """How many vendors (each a user with a token) the seeded wedding has; a test module
    overrides this fixture for more."""
    return 12


@pytest.fixture
def server_extra_env() -> dict[str, str]:
    """Settings the servers get on top of production's; a test module overrides this."""
    return {}


@pytest.fixture
def deployment(
    network: Network, vendors: int, server_extra_env: dict[str, str]
) -> Iterator[Deployment]:
    """The private Redis and PostgreSQL on ``data`` (migrated, one wedding seeded with
    ``vendors`` vendors) and a server per web host, not started; all stopped afterwards."""
    data, web = network.hosts["data"], [network.hosts["web1"], network.hosts["web2"]]
    redis = PrivateRedis(data)
    database = None
    servers: dict[str, HostServer] = {}
    try:
        database = PrivatePostgres(data, str(network.subnet))
        env = {**server_env(redis, database, web), **server_extra_env}
        world = seed(env, vendors)
        servers = {host.name: HostServer(host, env) for host in web}
        yield Deployment(network, redis, database, servers, world["topic"], world["tokens"])
    finally:
        for server in servers.values():
            server.stop()
        if database is not None:
            database.stop()
        redis.stop()
