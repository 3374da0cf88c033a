"""A wire with adjustable latency: relays Ethernet frames between pairs of tap devices.

Why it exists: the usual way to slow a link is ``tc qdisc add ... netem delay``, but a
kernel built without ``sch_netem`` (CONFIG_NET_SCH_NETEM unset, as on some CI virtual
machines) has no qdisc that holds a packet for a fixed time. This process is the
fallback: each host's link is two tap devices, one in the host's namespace and one on
the switch's bridge, and every frame between them passes through here, where frames
leaving the host wait ``delay`` seconds first, as under netem on the host's interface.
Both kernels' TCP stacks see the latency for real; nothing in the product is touched.

Run by ``bench.netns.netns`` (never by hand): ``python relay.py HOST_TAP SWITCH_TAP
[HOST_TAP SWITCH_TAP ...]``. It creates the taps in its own network namespace, prints
``ready``, and the caller moves them where they belong (an attached tap keeps working in
another namespace). Commands on stdin, one a line, each answered ``ok``:
``delay INDEX SECONDS`` sets the egress delay of link INDEX (0-based, in argv order).
End of stdin (the caller closed it, or died) ends the process, and with it the taps.

Plain Python and the standard library only: it must not load Django or the project.
"""

from __future__ import annotations

import collections
import fcntl
import os
import selectors
import struct
import sys
import time

TUNSETIFF = 0x400454CA  # from <linux/if_tun.h>
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000  # frames only, no 4-byte packet-information prefix
# Frames read from one tap per wake-up before looking at the others: enough to drain a
# burst, few enough that one busy link cannot starve the rest.
BATCH = 64


def open_tap(name: str) -> int:
    """A non-blocking file descriptor of a new tap device ``name``, gone when closed."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


class Direction:
    """One way along one link: frames read from ``source`` and written to ``target``
    after ``delay`` seconds, in the order read (a lowered delay never overtakes)."""

    def __init__(self, source: int, target: int) -> None:
        self.source, self.target = source, target
        self.delay = 0.0
        self.queue: collections.deque[tuple[float, bytes]] = collections.deque()
        self.last_due = 0.0

    def take(self, frame: bytes, now: float) -> None:
        if self.delay <= 0 and not self.queue:
            self._write(frame)
            return
        self.last_due = max(now + self.delay, self.last_due)
        self.queue.append((self.last_due, frame))

    def flush(self, now: float) -> float | None:
        """Write the frames that are due; the time the next one is due, if any."""
        while self.queue and self.queue[0][0] <= now:
            self._write(self.queue.popleft()[1])
        return self.queue[0][0] if self.queue else None

    def _write(self, frame: bytes) -> None:
        try:
            os.write(self.target, frame)
        except OSError:  # a full or vanished device: the frame is lost, as on a wire
            pass


def main(names: list[str]) -> int:
    if not names or len(names) % 2:
        print("usage: relay.py HOST_TAP SWITCH_TAP [HOST_TAP SWITCH_TAP ...]", file=sys.stderr)
        return 2
    selector = selectors.DefaultSelector()
    egress: list[Direction] = []  # per link: host -> switch, the direction that is delayed
    directions: list[Direction] = []
    for host_name, switch_name in zip(names[::2], names[1::2], strict=True):
        host, switch = open_tap(host_name), open_tap(switch_name)
        out, back = Direction(host, switch), Direction(switch, host)
        egress.append(out)
        directions += [out, back]
        selector.register(host, selectors.EVENT_READ, out)
        selector.register(switch, selectors.EVENT_READ, back)
    selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    print("ready", flush=True)
    commands = b""
    while True:
        now = time.monotonic()
        dues = [due for d in directions if (due := d.flush(now)) is not None]
        timeout = max(0.0, min(dues) - now) if dues else None
        for key, _ in selector.select(timeout):
            direction = key.data
            if direction is None:  # a command, or the end of stdin
                chunk = os.read(key.fd, 4096)
                if not chunk:
                    return 0
                commands += chunk
                while b"\n" in commands:
                    line, commands = commands.split(b"\n", 1)
                    _command(line.decode().split(), egress)
                continue
            now = time.monotonic()
            for _ in range(BATCH):
                try:
                    frame = os.read(direction.source, 65536)
                except BlockingIOError:
                    break
                except OSError:  # the device is gone (its namespace was deleted)
                    selector.unregister(direction.source)
                    break
                direction.take(frame, now)


def _command(words: list[str], egress: list[Direction]) -> None:
    if len(words) == 3 and words[0] == "delay":
        egress[int(words[1])].delay = float(words[2])
        print("ok", flush=True)
    else:
        print(f"error: unknown command {' '.join(words)!r}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
