"""``manage.py cachebench`` run small: the JSON it writes and what warming buys."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import orjson
import pytest
from django.core.management import call_command

from core.cache import reset_cache

pytestmark = [pytest.mark.django_db, pytest.mark.timeout(60)]

SMALL = ("--weddings", "2", "--vendors", "3", "--ops", "500", "--no-cache-ops", "100")


def run_small(tmp_path: Path) -> tuple[dict, str, str]:
    path = tmp_path / "cachebench.json"
    out, err = StringIO(), StringIO()
    reset_cache()
    try:
        call_command("cachebench", *SMALL, "--json", str(path), stdout=out, stderr=err)
    finally:
        reset_cache()
    return orjson.loads(path.read_bytes()), out.getvalue(), err.getvalue()


def assert_config_shape(config: dict) -> None:
    assert set(config) >= {
        "name",
        "gets",
        "writes",
        "hit_ratio",
        "latency",
        "redis_bytes",
        "redis_bytes_written",
        "compression_ratio",
        "run_s",
        "warm_s",
    }
    assert set(config["hit_ratio"]) == {"l1", "l2", "combined"}
    for tier in ("l1", "l2", "miss"):
        assert set(config["latency"][tier]) == {"count", "p50_us", "p99_us", "mean_us"}
    assert config["gets"] + config["writes"] > 0


@pytest.mark.redis
def test_cachebench__every_configuration_measured_and_warming_beats_no_cache(
    tmp_path: Path,
) -> None:
    # when
    document, out, err = run_small(tmp_path)

    # then
    configs = {c["name"]: c for c in document["configs"]}
    assert list(configs) == ["no cache", "L1 only", "L2 only", "both tiers", "both tiers + warming"]
    for config in configs.values():
        assert_config_shape(config)
    assert configs["no cache"]["gets"] == configs["no cache"]["latency"]["miss"]["count"]
    assert configs["no cache"]["hit_ratio"]["combined"] == 0
    warmed = configs["both tiers + warming"]
    assert warmed["hit_ratio"]["combined"] > configs["no cache"]["hit_ratio"]["combined"]
    assert warmed["hit_ratio"]["combined"] >= configs["both tiers"]["hit_ratio"]["combined"]
    assert warmed["latency"]["l1"]["count"] > 0
    assert configs["L2 only"]["latency"]["l2"]["count"] > 0
    assert configs["L2 only"]["redis_bytes"] > 0
    assert configs["L2 only"]["compression_ratio"] > 0
    assert configs["L1 only"]["redis_bytes"] == 0
    assert document["redis"] is True
    assert "--weddings 2 --vendors 3 --ops 500" in document["command"]
    assert "both tiers + warming" in out and "combined" in out
    assert "cachebench: both tiers + warming: warmed" in err


def test_cachebench__without_redis_runs_the_tiers_it_has(tmp_path: Path, settings) -> None:
    # given
    settings.REDIS_URL = ""

    # when
    document, _out, err = run_small(tmp_path)

    # then
    names = [c["name"] for c in document["configs"]]
    assert names == ["no cache", "L1 only"]
    for config in document["configs"]:
        assert_config_shape(config)
    assert document["configs"][1]["hit_ratio"]["l1"] > 0
    assert "L2 configurations are skipped" in err


def test_cachebench__leaves_the_database_as_it_was(tmp_path: Path, settings) -> None:
    from weddings.models import Wedding

    settings.REDIS_URL = ""
    before = Wedding.objects.count()

    run_small(tmp_path)

    assert Wedding.objects.count() == before
