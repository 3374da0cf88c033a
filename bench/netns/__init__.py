"""Hosts on one Linux machine as network namespaces joined by a bridge, with adjustable
latency (``tc netem``, or the user-space relay where the kernel has no netem) and
partitions: the multi-host test's hosts and the soak's network stall."""

from .netns import Host, Network, missing_requirements, netem_available

__all__ = ["Host", "Network", "missing_requirements", "netem_available"]
