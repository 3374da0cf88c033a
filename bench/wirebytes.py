"""Bytes on the wire per delivered event, with and without permessage-deflate, and the
CPU each compression costs (docs/adr/0034-bytes-on-the-wire.md, docs/benchmarks.md).

``python -m bench.wirebytes [--n 20000]``

The frames are the server's own: ``realtime.protocol.event_frame_text`` of typical
events (``timeline.item.updated``, ``vendor.status``, ``message.posted``). Compressed
sizes come from websockets' permessage-deflate, configured as uvicorn's websockets-sansio
server configures it (window 12 bits, memLevel 5, context takeover), over one
connection's stream of frames: steady state (one event after many), a reconnect's replay
of 50 missed events, and each kind alone. A WebSocket frame's header (2 bytes up to 125
bytes of payload, 4 up to 64 KiB; server frames are not masked) is counted; TCP/IP and
TLS are not (~50-90 bytes per packet, whatever the frame). CPU: ``time.process_time``
over N deliveries of the same frames, compressed against not (the frame header and
UTF-8 encoding only), in one sitting. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time
from datetime import UTC, datetime, timedelta

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "wedsync.settings")
django.setup()

from websockets.extensions.permessage_deflate import PerMessageDeflate  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402

from realtime.models import Event  # noqa: E402
from realtime.protocol import event_frame_text  # noqa: E402

START = datetime(2026, 6, 13, 14, 0, tzinfo=UTC)
REPLAY = 50
WORDS = (
    "the a to in on at for with and is are we need now ready cake marquee candles table "
    "photographer bridal party lake guests seated entrance music band speeches best man "
    "father bride groom car arrived late ten minutes five florist buttonholes confetti "
    "rain umbrellas canapes drinks reception dinner served starters mains dessert toast "
    "dance floor lights dj playlist microphone battery rings ushers order service vicar "
    "registrar signing certificate coach parking gate shuttle hotel room dress veil hair "
    "makeup flowers bouquet table plan name cards allergy vegan gluten kids entertainer"
).split()


def _event(seq: int, kind: str) -> Event:
    at = START + timedelta(seconds=7 * seq)
    actor = {"actor_user_id": 1040 + seq % 9, "actor_supplier_id": 310 + seq % 9}
    if kind == "timeline.item.updated":
        item = 5200 + seq % 40
        payload = {
            "id": item,
            "title": ["Ceremony", "Drinks reception", "First dance", "Speeches"][seq % 4],
            "starts_at": (START + timedelta(minutes=15 * (seq % 40))).isoformat(),
            "ends_at": (START + timedelta(minutes=15 * (seq % 40) + 30)).isoformat(),
            "location": "The Orangery, Aynhoe Park",
            "supplier_ids": [311, 314, 317],
            "status": "running",
            "key_moment": seq % 5 == 0,
            "pinned": False,
            "version": 3 + seq % 7,
        }
    elif kind == "vendor.status":
        payload = {"supplier_id": actor["actor_supplier_id"], "status": "arrived"}
        if seq % 3 == 0:
            payload = {
                "supplier_id": actor["actor_supplier_id"],
                "status": "running_late",
                "minutes_late": 10 + seq % 20,
                "note": "Stuck behind a tractor on the B4031, ten minutes out",
            }
    else:
        # A different sentence each time, as people write them (the dictionary is warm,
        # the sentences are not repeats).
        words = random.Random(seq).choices(WORDS, k=6 + seq % 13)  # noqa: S311  (test text)
        payload = {"text": " ".join(words).capitalize() + "."}
    return Event(
        topic="wedding:4821", seq=seq, event=kind, payload=payload, priority="normal",
        ack_required=False, created_at=at, **actor,
    )  # fmt: skip


KINDS = ("timeline.item.updated", "vendor.status", "message.posted")


def frames(count: int, kinds: tuple[str, ...] = KINDS, start: int = 1) -> list[str]:
    cycle = itertools.cycle(kinds)
    return [event_frame_text(_event(start + n, next(cycle))) for n in range(count)]


def server_deflate() -> PerMessageDeflate:
    """The server side of permessage-deflate as uvicorn's websockets-sansio negotiates it
    with a client offering the extension (browsers, the websockets client)."""
    return PerMessageDeflate(
        remote_no_context_takeover=False,
        local_no_context_takeover=False,
        remote_max_window_bits=12,
        local_max_window_bits=12,
        compress_settings={"memLevel": 5},
    )


def header_bytes(payload: int) -> int:
    return 2 if payload <= 125 else 4 if payload < 65536 else 10


def wire(texts: list[str], deflate: PerMessageDeflate | None) -> list[int]:
    """The bytes each text frame takes on the wire (header + payload)."""
    sizes = []
    for text in texts:
        frame = Frame(Opcode.TEXT, text.encode())
        if deflate is not None:
            frame = deflate.encode(frame)
        sizes.append(header_bytes(len(frame.data)) + len(frame.data))
    return sizes


def cpu_us(texts: list[str], n: int, compress: bool) -> float:
    """µs of CPU per delivery: encode the text, build the frame, compress it or not."""
    deflate = server_deflate() if compress else None
    stream = itertools.islice(itertools.cycle(texts), n)
    started = time.process_time()
    for text in stream:
        frame = Frame(Opcode.TEXT, text.encode())
        if deflate is not None:
            frame = deflate.encode(frame)
    return (time.process_time() - started) / n * 1e6


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def memory_kib_per_connection(texts: list[str], connections: int = 1000) -> float:
    """RSS added per connection by its compression state: ``connections`` server-side
    contexts, each having sent a few frames and read one client frame (compressed by a
    client context, as a browser's would be)."""
    client = PerMessageDeflate(False, False, 12, 12)
    ping = client.encode(Frame(Opcode.TEXT, b'{"type":"ping","ref":"1"}'))
    before = rss_kib()
    held = []
    for _ in range(connections):
        deflate = server_deflate()
        for text in texts[:3]:
            deflate.encode(Frame(Opcode.TEXT, text.encode()))
        deflate.decode(ping)
        held.append(deflate)
    return (rss_kib() - before) / connections


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="deliveries per CPU figure")
    args = parser.parse_args()

    print("bytes per delivered event (WebSocket header + payload):")
    print(f"  {'event':24} {'plain':>6} {'deflate, alone':>15} {'deflate, in a stream':>21}")
    warm = frames(200)  # the connection has carried events before: a warm context
    for kind in KINDS:
        texts = frames(50, (kind,), start=1000)
        plain = wire(texts, None)
        alone = wire(texts[:1], server_deflate())[0]  # the first frame of a connection
        streamed = wire(warm + texts, server_deflate())[len(warm) :]
        print(
            f"  {kind:24} {sum(plain) / len(plain):6.0f} {alone:15.0f} "
            f"{sum(streamed) / len(streamed):21.0f}"
        )
    mixed = frames(REPLAY, start=2000)
    plain = sum(wire(mixed, None))
    fresh = sum(wire(mixed, server_deflate()))  # a reconnect: a new connection, new context
    print(f"reconnect with replay of {REPLAY} mixed events (new connection):")
    print(f"  plain {plain} B, deflate {fresh} B ({fresh / plain:.0%})")
    steady = wire(warm + mixed, server_deflate())[len(warm) :]
    print(
        f"mixed stream, steady state: plain {plain / REPLAY:.0f} B/event, "
        f"deflate {sum(steady) / REPLAY:.0f} B/event"
    )
    texts = frames(300)
    print(
        f"memory per connection (RSS, 1,000 contexts): {memory_kib_per_connection(texts):.0f} KiB"
    )
    base = cpu_us(texts, args.n, compress=False)
    comp = cpu_us(texts, args.n, compress=True)
    print(f"CPU per delivery over {args.n} (process_time): plain {base:.1f} µs, "
          f"deflate {comp:.1f} µs (+{comp - base:.1f} µs, x{comp / base:.1f})")  # fmt: skip


if __name__ == "__main__":
    main()
