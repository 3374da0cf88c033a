from django.apps import AppConfig


class BenchConfig(AppConfig):
    """Development-only benchmarks: ``loadtest``, ``cachebench``, ``scaling_backtest``.

    Installed only where the ``bench`` package is present (settings.py): a production
    image leaves it out, and nothing in the product imports it."""

    name = "bench"
    verbose_name = "Benchmarks"
