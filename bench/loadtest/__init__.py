"""The load benchmark behind ``python manage.py loadtest`` (docs/benchmarks.md).

Pure parts, importable without Django (the generator's worker processes never set
Django up): ``accounting`` (seq continuity, loss, latency percentiles), ``scenarios``
(parameters), ``report`` (table and JSON), ``procstat`` (/proc sampling of the server),
``receiver`` (the thin WebSocket receiver), ``worker`` (a generator process),
``flooder`` (hostile-member's flooding process) and ``merging`` (the workers' results
summed). ``server`` starts the server, ``runner`` drives a scenario through its
coroutine in ``phases`` (``hostile`` for hostile-member); only ``seeding`` and
``integrity`` (hostile-member's checks of the event log and alerts) touch the ORM.
"""
