"""The old names of ``realtime.connection_counts`` (the connection limit counter).

Only ``tests/realtime/test_connections.py`` still uses them; delete this module once it
imports ``realtime.connection_counts`` (``ConnectionCounter``, ``LocalCounts``,
``RedisCounts``, ``get_connection_counter``, ``_counters``). Nothing else may import it.
"""

from .connection_counts import KINDS, Connection, Refusal, supplier_limit
from .connection_counts import ConnectionCounter as ConnectionRegistry
from .connection_counts import LocalCounts as LocalConnections
from .connection_counts import RedisCounts as RedisConnections
from .connection_counts import _counters as _registries
from .connection_counts import get_connection_counter as get_connection_registry

__all__ = [
    "KINDS",
    "Connection",
    "ConnectionRegistry",
    "LocalConnections",
    "RedisConnections",
    "Refusal",
    "_registries",
    "get_connection_registry",
    "supplier_limit",
]
