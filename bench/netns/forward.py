"""A TCP forwarder: connections to LISTEN_HOST:LISTEN_PORT are joined to TARGET_HOST:PORT.

Why it exists: a host in a namespace (``netns``) reaches the root namespace only at its
bridge address, while a PostgreSQL of the machine usually listens on loopback alone
(``listen_addresses = 'localhost'``). The soak runs this in the root namespace so that
its server, in a namespace of its own, reaches the machine's PostgreSQL across the
bridge, and a stall of the server's link holds its database traffic too. A backend
PostgreSQL terminates closes its forwarded connection, which closes the server's end:
the server sees what it would see without the forwarder.

Run by ``bench.soak`` (never by hand): ``python forward.py LISTEN_HOST LISTEN_PORT
TARGET_HOST TARGET_PORT``; prints ``ready`` once listening, ends with its stdin (the
caller closed it, or died). Standard library only: it must not load Django or the project.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading


def _pump(source: socket.socket, target: socket.socket) -> None:
    """Copy one direction until either end closes, then close both (the other pump
    then ends too)."""
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            client.close()
            continue
        upstream.settimeout(None)
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=(a, b), daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: forward.py LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT", file=sys.stderr)
        return 2
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((argv[0], int(argv[1])))
    listener.listen(256)
    threading.Thread(target=_serve, args=(listener, (argv[2], int(argv[3]))), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # until the caller closes it
    listener.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
