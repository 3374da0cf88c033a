"""Several hosts on one Linux machine: network namespaces joined by a bridge.

Why: on one loopback a "network fault" can only be a dead process. Here each host is a
network namespace with its own address, routes and interfaces, so a partition or latency
is a real network fault: segments are dropped or held by the kernel between two TCP
stacks, and the processes on both sides learn of it only as they would in a data centre,
by timeouts.

The layout (``Network``)::

    root namespace (the caller, its clients)          10.77.N.1 ----+
    host "data" (its own namespace)                   10.77.N.10 ---+-- bridge br0, in a
    host "web1"                                       10.77.N.21 ---+   namespace "switch"
    ...                                                             |   of its own

The bridge sits in a namespace of its own, so the machine's firewall (a Docker host's
FORWARD policy, say) never sees the frames between hosts. Each host's link is a veth
pair when the kernel has ``sch_netem``, slowed with ``tc netem``; without it, a pair of
tap devices relayed by ``relay.py``, which delays frames in user space (see there).

Faults: ``Network.cut`` drops every segment between a host and one TCP port of another,
both ways (policy-routing rules, so other traffic between the two carries on: a web host
loses Redis but keeps PostgreSQL and its clients); ``Network.set_delay`` adds latency to
what hosts send. Everything made is removed by ``Network.close`` (also when a test or a
soak fails), and namespaces left by a run that was killed are removed by the next.

Used by the multi-host test (``tests/multihost``) and by the soak's network stall
(``bench.soak``); one copy for both, under ``bench`` because the tests may import the
benchmarks' code but not the other way round.

Needs root, iproute2 (``ip netns``, veth, bridge, ``ip rule``) and either sch_netem or
/dev/net/tun; ``missing_requirements`` says what is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Every name this module gives a namespace or a root-namespace interface starts with this
# and the pid of the process that made it, so that leftovers of a killed run are known.
PREFIX = "wsmh"
# Subnets are taken from 10.77.0.0/16, a /24 per network, the first one free.
SUPERNET = ipaddress.ip_network("10.77.0.0/16")
# Taken while a network picks its subnet, so that two runs at once never pick the same.
LOCK_FILE = Path(tempfile.gettempdir(), "wedsync-multihost.lock")
# The priority of the rules of a cut: before the main table's lookup (32766).
CUT_RULE_PREF = 100
RELAY = Path(__file__).with_name("relay.py")


def ip(*args: str, namespace: str | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` (in ``namespace`` if given); its output. Raises with ip's own
    message when it fails and ``check``."""
    argv = ["ip", *(["-n", namespace] if namespace else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def missing_requirements() -> list[str]:
    """Why several hosts cannot be built on this machine (empty when they can)."""
    if sys.platform != "linux":
        return ["network namespaces need Linux"]
    if os.geteuid() != 0:
        return ["network namespaces need root (run it as root)"]
    if shutil.which("ip") is None:
        return ["iproute2's `ip` is not installed"]
    probe = f"{PREFIX}{os.getpid()}-probe"
    try:
        ip("netns", "add", probe)
    except RuntimeError as exc:
        return [f"`ip netns add` does not work here: {exc}"]
    try:
        ip("link", "add", "probe0", "type", "veth", "peer", "name", "probe1", namespace=probe)
        ip("link", "add", "probe2", "type", "bridge", namespace=probe)
    except RuntimeError as exc:
        return [f"veth pairs or bridges are not available: {exc}"]
    finally:
        ip("netns", "del", probe, check=False)
    if not netem_available() and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        return ["neither tc netem (sch_netem) nor /dev/net/tun is available for latency"]
    return []


@functools.cache
def netem_available() -> bool:
    """Whether the kernel has sch_netem (``tc qdisc ... netem``); probed once, in a
    namespace of its own."""
    if shutil.which("tc") is None:
        return False
    probe = f"{PREFIX}{os.getpid()}-netem"
    try:
        ip("netns", "add", probe)
    except RuntimeError:
        return False
    try:
        result = subprocess.run(
            ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root",
             "netem", "delay", "1ms"],
            capture_output=True, timeout=30,
        )  # fmt: skip
        return result.returncode == 0
    finally:
        ip("netns", "del", probe, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> None:
    """Remove the namespaces (and the processes in them) of runs that died without
    cleaning up: those whose maker's pid is gone. A root interface goes with its peer."""
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{PREFIX}(\d+)-.+", name)
        if match and not _pid_alive(int(match.group(1))):
            _delete_namespace(name)


def _delete_namespace(name: str) -> None:
    """Kill what still runs in namespace ``name`` (processes its maker started there) and
    delete it; its veths and taps go with it."""
    for pid in ip("netns", "pids", name, check=False).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    ip("netns", "del", name, check=False)


class Host:
    """One host: a network namespace with one interface (``eth0``) on the bridge."""

    def __init__(self, network: Network, name: str, address: str) -> None:
        self.network, self.name, self.address = network, name, address
        self.namespace = f"{network.tag}-{name}"
        self._relay: subprocess.Popen | None = None

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run on this host (``ip netns exec``, which execs it: the process is
        ``argv`` itself, with the pid Popen reports)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def popen(self, argv: list[str], **kwargs) -> subprocess.Popen:
        """Start ``argv`` on this host, in a session of its own (``os.killpg`` stops it
        with its children)."""
        kwargs.setdefault("start_new_session", True)
        return subprocess.Popen(self.command(argv), **kwargs)

    def run(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host to completion (raises when it fails)."""
        kwargs.setdefault("check", True)
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.command(argv), **kwargs)

    # --- the link ---------------------------------------------------------------------

    def _plug(self, index: int, relay: bool) -> None:
        """Make the namespace and its link to the bridge (a veth pair, or relayed taps)."""
        ns, switch = self.namespace, self.network.switch
        ip("netns", "add", ns)
        ip("link", "set", "lo", "up", namespace=ns)
        if relay:
            host_tap, switch_tap = f"{self.network.tag}{index}h", f"{self.network.tag}{index}s"
            self._relay = subprocess.Popen(
                [sys.executable, str(RELAY), host_tap, switch_tap],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                start_new_session=True,
            )  # fmt: skip
            if self._relay.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the relay of {self.name} did not start")
            ip("link", "set", host_tap, "netns", ns)
            ip("link", "set", host_tap, "name", "eth0", namespace=ns)
            ip("link", "set", switch_tap, "netns", switch)
            ip("link", "set", switch_tap, "name", self.name, namespace=switch)
        else:
            ip("link", "add", "eth0", "type", "veth", "peer", "name", self.name, "netns",
               switch, namespace=ns)  # fmt: skip
        ip("link", "set", self.name, "master", "br0", "up", namespace=switch)
        ip("addr", "add", f"{self.address}/{self.network.prefixlen}", "dev", "eth0", namespace=ns)
        ip("link", "set", "eth0", "up", namespace=ns)

    def set_delay(self, seconds: float) -> None:
        """Hold every frame this host sends for ``seconds`` (0: none), like ``tc netem
        delay`` on its interface: between two hosts both so slowed, each way takes
        ``seconds`` longer."""
        if self._relay is not None:
            assert self._relay.stdin is not None and self._relay.stdout is not None
            self._relay.stdin.write(f"delay 0 {seconds}\n")
            self._relay.stdin.flush()
            answer = self._relay.stdout.readline().strip()
            if answer != "ok":
                raise RuntimeError(f"the relay of {self.name} answered {answer!r}")
        else:
            # Replaced, never deleted: deleting the qdisc would drop the frames it holds,
            # and a delay holds frames, it does not lose them (nor does netem's queue:
            # its default 1,000 packets would overflow on a busy host's long delay).
            self.run(["tc", "qdisc", "replace", "dev", "eth0", "root", "netem", "delay",
                      f"{seconds * 1000:g}ms", "limit", "1000000"])  # fmt: skip

    def close(self) -> None:
        """Stop the relay (its taps vanish) and delete the namespace with what runs in it."""
        if self._relay is not None:
            with contextlib.suppress(OSError):
                self._relay.stdin.close()
            try:
                self._relay.wait(5)
            except subprocess.TimeoutExpired:
                self._relay.kill()
                self._relay.wait(5)
            self._relay.stdout.close()
            self._relay = None
        _delete_namespace(self.namespace)

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address}>"


class Network:
    """A bridge in a namespace of its own, the root namespace on it, and hosts added
    with ``add_host``; ``close()`` removes it all. Use as a context manager.

    ``link`` chooses the hosts' links: ``"veth"`` (latency with tc netem), ``"relay"``
    (latency in user space, ``relay.py``), or ``"auto"``: veth when the kernel has netem.
    """

    def __init__(self, link: str = "auto") -> None:
        if link not in {"auto", "veth", "relay"}:
            raise ValueError(f"link must be auto, veth or relay, not {link!r}")
        self.relay = link == "relay" or (link == "auto" and not netem_available())
        remove_stale()
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-switch"
        self.hosts: dict[str, Host] = {}
        self._cuts: list[tuple[str, str]] = []  # (namespace, rule spec) in place
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self) -> None:
        ip("netns", "add", self.switch)
        ip("link", "set", "lo", "up", namespace=self.switch)
        ip("link", "add", "br0", "type", "bridge", namespace=self.switch)
        ip("link", "set", "br0", "up", namespace=self.switch)
        # The root namespace's interface, made before the subnet is chosen and given its
        # address under the lock, so that two runs never claim one subnet.
        ip("link", "add", self.tag, "type", "veth", "peer", "name", "root", "netns", self.switch)
        ip("link", "set", "root", "master", "br0", "up", namespace=self.switch)
        lock = os.open(LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.subnet = self._free_subnet()
            self.prefixlen = self.subnet.prefixlen
            self.root_address = str(self.subnet[1])
            ip("addr", "add", f"{self.root_address}/{self.prefixlen}", "dev", self.tag)
        finally:
            os.close(lock)  # and with it the lock
        ip("link", "set", self.tag, "up")

    @staticmethod
    def _free_subnet() -> ipaddress.IPv4Network:
        """The first /24 of SUPERNET that no address or route of the root namespace uses."""
        used = [
            ipaddress.ip_network(word, strict=False)
            for word in (ip("-4", "-o", "addr", "show") + ip("-4", "route", "show")).split()
            if re.fullmatch(r"\d+\.\d+\.\d+\.\d+(/\d+)?", word)
        ]
        for subnet in SUPERNET.subnets(new_prefix=24):
            if not any(subnet.overlaps(other) for other in used):
                return subnet
        raise RuntimeError(f"no free /24 left in {SUPERNET}")

    def add_host(self, name: str, number: int) -> Host:
        """A new host ``name`` with the address ``number`` of the subnet (2 to 254)."""
        if not 2 <= number <= 254 or len(name) > 15 or name in self.hosts:
            raise ValueError(f"bad host {name!r} / {number}")
        host = Host(self, name, str(self.subnet[number]))
        self.hosts[name] = host
        host._plug(len(self.hosts), self.relay)
        return host

    # --- faults -----------------------------------------------------------------------

    def cut(self, client: Host, server: Host, port: int) -> None:
        """Partition ``client`` from TCP ``port`` on ``server``, both ways: every segment
        of such a connection is dropped as it leaves either host (no reset, no error on
        an open connection: it goes silent, as behind a dead switch port; a new connect
        fails at once, "network is unreachable"). Other traffic between them carries on."""
        rules = [
            (client.namespace, f"to {server.address}/32 ipproto tcp dport {port}"),
            (server.namespace, f"to {client.address}/32 ipproto tcp sport {port}"),
        ]
        for namespace, spec in rules:
            ip("rule", "add", "pref", str(CUT_RULE_PREF), *spec.split(), "unreachable",
               namespace=namespace)  # fmt: skip
            self._cuts.append((namespace, spec))

    def heal(self) -> None:
        """Remove every cut: the silent connections resume (TCP retransmits), new ones
        connect again."""
        while self._cuts:
            namespace, spec = self._cuts.pop()
            ip("rule", "del", "pref", str(CUT_RULE_PREF), *spec.split(), "unreachable",
               namespace=namespace, check=False)  # fmt: skip

    @contextlib.contextmanager
    def partitioned(self, client: Host, server: Host, port: int) -> Iterator[None]:
        """``cut`` for the duration of the block, healed also when it raises."""
        self.cut(client, server, port)
        try:
            yield
        finally:
            self.heal()

    def set_delay(self, seconds: float, hosts: list[Host] | None = None) -> None:
        """``Host.set_delay`` on ``hosts`` (default: every host)."""
        for host in hosts if hosts is not None else list(self.hosts.values()):
            host.set_delay(seconds)

    # --- cleanup ----------------------------------------------------------------------

    def close(self) -> None:
        """Remove the hosts (killing what still runs in them), the bridge and the root
        interface; safe to call twice, and after a failed build."""
        for host in list(self.hosts.values()):
            host.close()
        self.hosts.clear()
        self._cuts.clear()
        _delete_namespace(self.switch)  # the root interface goes with its peer
        ip("link", "del", self.tag, check=False)  # in case the peer never moved

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
