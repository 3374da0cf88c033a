"""The Saturday soak (``manage.py soak``, docs/benchmarks.md): saturday-peak's load for a
bounded time while faults are injected on a schedule, then proofs of delivery, memory and
alerts. ``world`` starts what it runs on, ``faults`` injects, ``run`` drives the load
(``bench.loadtest``'s receivers, publishers and accounting), ``memory`` and ``proofs``
judge, ``evaluator`` is the alert evaluation's own process."""
