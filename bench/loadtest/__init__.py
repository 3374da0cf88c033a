"""The load benchmark behind ``python manage.py loadtest`` (docs/benchmarks.md).

Pure parts, importable without Django (the generator's worker processes never set
Django up): ``accounting`` (seq continuity, loss, latency percentiles), ``scenarios``
(parameters), ``report`` (table and JSON), ``procstat`` (/proc sampling of the server),
``receiver`` (the thin WebSocket receiver) and ``worker`` (a generator process).
``server`` and ``runner`` start the server and drive a scenario; only ``seeding``
touches the ORM.
"""
