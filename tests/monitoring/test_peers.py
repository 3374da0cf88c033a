"""Figures added up over several hosts' /metrics (``METRICS_PEERS``, monitoring/figures.py).

On Kubernetes every pod is a host with its own metric files, so the worker taking the
minute snapshot reads the server processes' ``/metrics`` instead. Real server processes,
each with its own metrics folder (two hosts), hold real WebSocket connections; the
Kubernetes wiring is read from the rendered production overlay.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from core import metrics
from monitoring import figures, selectors, services
from monitoring.models import MetricSnapshot
from realtime.tokens import token_issue
from tests.deploy.support import K8S_DIR, containers, env_value, find, kustomize
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from tests.realtime.test_e2e import Ws, open_ws
from tests.servers import Server

TOKEN = "peer-scrape-token"


def url(server: Server) -> str:
    return f"http://127.0.0.1:{server.port}"


def wait_for(read: Callable[[], dict], check: Callable[[dict], bool], timeout: float = 15
             ) -> dict:  # fmt: skip
    """Read until ``check`` holds (the servers sample their gauges every 0.2 s here)."""
    deadline = time.monotonic() + timeout
    while True:
        reading = read()
        if check(reading) or time.monotonic() > deadline:
            return reading
        time.sleep(0.2)


@database_sync_to_async
def vendor_tokens(count: int) -> list[str]:
    wedding = make_wedding()
    users = [make_user() for _ in range(count)]
    for user in users:
        make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return [token_issue(user=user) for user in users]


async def close_all(sockets: list[Ws]) -> None:
    for ws in sockets:
        ws.ws.close_timeout = 1  # a killed server's clients have nobody to close with
        await ws.close()


# --- two hosts -------------------------------------------------------------------------------


@pytest.fixture
def two_hosts() -> Iterator[list[Server]]:
    """Two server processes, each with its own metrics folder (two hosts), that admit the
    scrape token and no network: a peer reads them as Prometheus does."""
    env = {"METRICS_TOKEN": TOKEN, "METRICS_ALLOWED_NETWORKS": "", "METRICS_SAMPLE_INTERVAL": "0.2"}
    running = [Server("uvicorn", **env), Server("uvicorn", **env)]
    yield running
    for server in running:
        server.stop()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
async def test_peers__two_hosts_add_up_and_a_stopped_one_leaves_the_other_counted(two_hosts):
    # given: two hosts, with two connections held open on A and one on B
    a, b = two_hosts
    tokens = await vendor_tokens(3)
    sockets = [
        await open_ws(a, tokens[0]),
        await open_ws(a, tokens[1]),
        await open_ws(b, tokens[2]),
    ]
    peers = [url(a), url(b)]

    def read(token: str = TOKEN) -> dict:
        return figures.read_totals_from_peers(peers, token=token, host="")

    try:
        # when: the worker reads both hosts' /metrics with the scrape token
        both = await asyncio.to_thread(wait_for, read, lambda t: t["connections"] == 3)

        # then: their connections add up, nobody failed
        assert both["connections"] == 3
        assert both["peers"] == {"read": 2, "failed": {}, "skipped": [], "partial": False}
        assert set(both["by_peer"]) == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"}
        # and the counters are those of each host's own files, added up
        files = [figures.read_totals(Path(server.metrics_dir)) for server in (a, b)]
        assert both["connects"] == sum(own["connects"] for own in files) == 3

        # when: the token is missing
        refused = await asyncio.to_thread(read, token="")

        # then: nothing is counted in silence: both peers failed, the figures are partial
        assert refused["peers"]["partial"] is True
        assert set(refused["peers"]["failed"].values()) == {"HTTP 401"}
        assert refused["connections"] == 0

        # when: B stops (SIGKILL: it answers nothing any more)
        await asyncio.to_thread(b.kill)
        one = await asyncio.to_thread(read)

        # then: the figures are partial, B named as failed, A still counted
        assert one["peers"]["partial"] is True
        assert list(one["peers"]["failed"]) == [f"127.0.0.1:{b.port}"]
        assert one["peers"]["read"] == 1
        assert one["connections"] == 2
        # and B's counters leaving is no counter reset: no rate from A's lifetime
        derived = figures.derive(both, one, 60)
        assert derived["connects_per_s"] == 0
    finally:
        await close_all(sockets)


# --- the DNS form, as METRICS_PEERS -----------------------------------------------------------


@pytest.fixture
def one_host() -> Iterator[Server]:
    server = Server("uvicorn", METRICS_SAMPLE_INTERVAL="0.2")
    yield server
    server.stop()


@pytest.mark.slow
@pytest.mark.redis
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(90)
async def test_peers__the_dns_form_feeds_the_live_figures_and_the_snapshot(one_host, settings):
    # given: one host, named by DNS in METRICS_PEERS (loopback is an allowed network of
    # the test servers, so no token), with two connections open
    settings.METRICS_PEERS = [f"dns:localhost:{one_host.port}"]
    settings.METRICS_TOKEN = ""
    addresses = {info[4][0] for info in socket.getaddrinfo("localhost", one_host.port)}
    tokens = await vendor_tokens(2)
    sockets = [await open_ws(one_host, token) for token in tokens]

    try:
        # when: the live figures are read (they look up the latest snapshot: a database
        # thread, so that its connection is closed)
        live = await database_sync_to_async(wait_for)(
            selectors.live_figures, lambda f: f["connections"] == 2
        )

        # then: they are the peer's, read at each address localhost resolves to (the
        # server listens on 127.0.0.1 only: another address would be reported as failed)
        assert live["connections"] == 2
        assert live["peers"]["read"] == 1
        assert live["peers"]["read"] + len(live["peers"]["failed"]) == len(addresses)
        assert live["peers"]["partial"] is (addresses != {"127.0.0.1"})

        # when: two minute snapshots are taken
        start = timezone.now()
        first = await database_sync_to_async(services.snapshot_record)(now=start)
        second = await database_sync_to_async(services.snapshot_record)(
            now=start + dt.timedelta(minutes=1)
        )

        # then: both count the peer's connections; the second has rates over the minute,
        # from the same host's counters in the first
        assert first.connections == second.connections == 2
        assert f"127.0.0.1:{one_host.port}" in second.totals["by_peer"]
        assert second.interval_s == 60 and second.deliveries_per_s is not None
        # and only the latest row keeps each host's counters: history keeps the sums
        first_totals = await database_sync_to_async(
            lambda: MetricSnapshot.objects.get(pk=first.pk).totals
        )()
        assert "by_peer" not in first_totals
        assert first_totals["peers"]["read"] == 1 and first_totals["connections"] == 2
    finally:
        await close_all(sockets)


# --- this host among the peers ------------------------------------------------------------------


def this_hosts_address() -> str | None:
    """A non-loopback address of this machine (the one its default route leaves from)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # a UDP "connect" sends nothing
        except OSError:
            return None
        address = sock.getsockname()[0]
    return None if address.startswith("127.") else address


def test_peers__this_hosts_address_beside_local_is_not_read_twice(tmp_path) -> None:
    # given: this host's files (a still copy of this process's, which has opened a
    # connection) and a peer at this machine's own address, where nothing listens
    address = this_hosts_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    metrics.connection_opened()
    for own in metrics.metrics_dir().glob(f"*_{os.getpid()}.db"):
        shutil.copy(own, tmp_path)
    peer = f"http://{address}:9"

    # when: the peer is listed beside "local"
    with_local = figures.read_totals_from_peers(
        ["local", peer], token="", host="", local_path=tmp_path
    )

    # then: it is skipped, not read a second time over HTTP: nothing failed
    assert with_local["peers"]["skipped"] == [f"{address}:9"]
    assert with_local["peers"]["partial"] is False
    assert with_local["peers"]["read"] == 1
    assert with_local["connects"] == figures.read_totals(tmp_path)["connects"] >= 1

    # when: it is listed alone
    alone = figures.read_totals_from_peers([peer], token="", host="", timeout=1)

    # then: it is read, and fails here (nothing listens): only "local" makes it redundant
    assert alone["peers"]["skipped"] == []
    assert list(alone["peers"]["failed"]) == [f"{address}:9"]


# --- adding hosts up and comparing readings (no server needed) ---------------------------------


def host(deliveries: float, connections: float = 0, **gauges: float) -> list[figures.Sample]:
    samples: list[figures.Sample] = [
        ("wedsync_event_deliveries_total", {}, deliveries),
        ("wedsync_ws_connections", {}, connections),
    ]
    names = {"outbox_max": "wedsync_outbox_depth_max", "cpu": "wedsync_server_cpu_ratio"}
    return samples + [(names[name], {}, value) for name, value in gauges.items()]


def test_totals_of_hosts__counters_and_gauges_add_the_worst_of_gauges_take_the_largest() -> None:
    totals = figures.totals_of_hosts(
        {"a": host(10, connections=3, outbox_max=5, cpu=0.4),
         "b": host(20, connections=4, outbox_max=9, cpu=0.2)}
    )  # fmt: skip

    assert (totals["deliveries"], totals["connections"]) == (30, 7)
    assert (totals["outbox_depth_max"], totals["server_cpu"]) == (9, 0.4)
    assert totals["by_peer"]["a"]["deliveries"] == 10


def test_derive__a_host_that_left_or_failed_is_no_counter_reset() -> None:
    # given: two hosts, then B gone (scaled down, or not answering)
    before = figures.totals_of_hosts({"a": host(1000), "b": host(5000)})
    after = figures.totals_of_hosts({"a": host(1060)})

    # when
    out = figures.derive(before, after, 60)

    # then: A's 60 deliveries in the minute, not A's whole count
    assert out["deliveries_per_s"] == pytest.approx(1.0)


def test_derive__a_new_host_counts_from_its_first_reading_a_restarted_one_from_zero() -> None:
    before = figures.totals_of_hosts({"a": host(100)})
    # C is new (its 5000 happened before anybody compared), A restarted (30 since)
    after = figures.totals_of_hosts({"a": host(30), "c": host(5000)})

    out = figures.derive(before, after, 60)

    assert out["deliveries_per_s"] == pytest.approx(30 / 60)


def test_derive__no_host_in_both_readings_gives_no_rates() -> None:
    out = figures.derive(
        figures.totals_of_hosts({"a": host(100)}),
        figures.totals_of_hosts({"b": host(900, connections=2)}),
        60,
    )

    assert out["deliveries_per_s"] is None
    assert out["connections"] == 2  # gauges are the current reading's


def test_resolve_peers__urls_dns_names_and_what_is_neither() -> None:
    peers, failed = figures.resolve_peers(
        ["http://127.0.0.1:8000", "http://127.0.0.1:8000/metrics", " local ",
         "dns:localhost:8001", "ftp://127.0.0.1:8000", "dns:localhost"]
    )  # fmt: skip

    keys = [peer.key for peer in peers]
    assert keys[0] == "127.0.0.1:8000" and keys.count("127.0.0.1:8000") == 1  # read once
    assert "127.0.0.1:8001" in keys
    assert peers[0].url == "http://127.0.0.1:8000/metrics"
    assert set(failed) == {"ftp://127.0.0.1:8000", "dns:localhost"}


# --- the Kubernetes wiring ------------------------------------------------------------------------


def selects(service: dict, workload: dict) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return service["spec"].get("selector", {}).items() <= labels.items()


def allows(policy: dict, labels: dict) -> bool:
    """Whether a podSelector's matchExpressions (operator In) take pods with ``labels``."""
    expressions = policy["podSelector"]["matchExpressions"]
    return all(labels.get(e["key"]) in e["values"] for e in expressions)


def test_kubernetes__metrics_peers_name_every_web_and_worker_pod_once_and_may_reach_them():
    # given: the production overlay as rendered
    rendered = kustomize(K8S_DIR / "overlays" / "production")
    (configmap,) = [o for o in rendered if o["kind"] == "ConfigMap"]
    (monitor,) = [o for o in rendered if o["kind"] == "ServiceMonitor"]
    scraped = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    policy = find(rendered, "NetworkPolicy", "wedsync-metrics-peers")["spec"]
    (rule,) = policy["ingress"]
    # the readers: the worker (the snapshot, the live figures), a web pod (the metrics API)
    readers = [{"app.kubernetes.io/name": "wedsync", "app.kubernetes.io/component": component}
               for component in ("worker", "web")]  # fmt: skip

    read = set()
    for entry in configmap["data"]["METRICS_PEERS"].split(","):
        # then: each entry is dns:<a headless Service>:<its port> ...
        kind, name, port = entry.split(":")
        service = find(rendered, "Service", name)
        assert kind == "dns" and service["spec"]["clusterIP"] == "None"
        (service_port,) = [p for p in service["spec"]["ports"] if p["port"] == int(port)]
        (deployment,) = [o for o in rendered if o["kind"] == "Deployment" and selects(service, o)]
        # ... reaching the container port that serves /metrics in the pods it selects,
        (serving,) = [
            c for c in containers(deployment)
            for p in c.get("ports", []) if p["name"] == service_port["targetPort"]
        ]  # fmt: skip
        # whose allowed hosts take the pod's IP (the Host a peer sends)
        assert env_value(serving, "ALLOWED_HOSTS").split(",")[-1] == "$(POD_IP)"
        # and the readers may open that port, by the network policy
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert allows(policy, pod_labels)
        assert all(allows(rule["from"][0], reader) for reader in readers)
        assert {"port": service_port["targetPort"], "protocol": "TCP"} in rule["ports"]
        # and Prometheus still scrapes these pods through one Service only
        monitored = [
            o for o in rendered if o["kind"] == "Service" and selects(o, deployment)
            and {p["name"] for p in o["spec"]["ports"]} & scraped
        ]  # fmt: skip
        assert len(monitored) == 1, [o["metadata"]["name"] for o in monitored]
        read.add(pod_labels["app.kubernetes.io/component"])

    assert read == {"web", "worker"}
