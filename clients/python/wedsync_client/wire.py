"""The wire constants the client needs, from PROTOCOL.md v1. The client ships
on its own, so it keeps its own copy; ``tests/clients/test_wire.py`` checks each against
the server's ``realtime.protocol``, so the two cannot drift apart."""

MAX_FRAME_BYTES = 65536  # §1: a frame larger than this is refused (too_large)
MAX_TOPICS_PER_FRAME = 100  # §3: topics in one subscribe or unsubscribe
CLOSE_UNAUTHENTICATED = 4001  # §8: the token is missing, invalid or expired
CLOSE_POLICY = 4008  # §8: too many errors in a row
CLOSE_CONNECTION_LIMIT = 4029  # §8: too many connections for the user or the supplier
CLOSE_OVERLOADED = 1013  # §8: the server sheds load; come back later
