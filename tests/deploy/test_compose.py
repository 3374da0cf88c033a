"""compose.yaml, read as YAML: its services, their order (migrate first), health checks
and the variables it sets. No Docker engine runs here, so `docker compose config` is not
run on it (docs/deploy.md says so)."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.support import BASE_DIR, documented_variables, env_file

COMPOSE = BASE_DIR / "compose.yaml"
WEDSYNC = ("migrate", "web", "worker", "beat")
LONG_RUNNING = ("web", "worker", "beat")
DOCUMENTED_GRACE_S = 10.0  # REALTIME_SHUTDOWN_GRACE's default, which compose keeps


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _env_files(service: dict) -> list:
    return [BASE_DIR / (f if isinstance(f, str) else f["path"]) for f in service["env_file"]]


def test_compose__has_the_stack_and_nothing_else(services):
    assert set(services) == {"migrate", "web", "worker", "beat", "pidns", "postgres", "redis"}


def test_compose__one_image_for_every_wedsync_process_chosen_by_command(services):
    images = {services[name]["image"] for name in WEDSYNC}
    builds = {services[name]["build"]["context"] for name in WEDSYNC}

    assert len(images) == 1 and builds == {"."}
    assert services["web"]["command"][:3] == ["python", "-m", "wedsync.serve"]
    assert services["worker"]["command"][:4] == ["celery", "-A", "wedsync", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "wedsync", "beat"]
    assert "python manage.py migrate --noinput" in " ".join(services["migrate"]["command"])


def test_compose__migrate_runs_once_before_web_worker_and_beat(services):
    migrate = services["migrate"]

    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_compose__health_checks_where_something_can_answer(services):
    for name in ("web", "worker", "postgres", "redis"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and check["interval"], name
    assert services["web"]["healthcheck"]["test"][1:] == [
        "python", "/app/deploy/docker/healthcheck.py", "8000",
    ]  # fmt: skip
    assert "inspect ping" in services["worker"]["healthcheck"]["test"][1]
    # beat answers nothing (a stopped beat raises celery_beat_late), and the one-shot
    # migrate would only be marked unhealthy by the image's web check
    assert services["beat"]["healthcheck"] == {"disable": True}
    assert services["migrate"]["healthcheck"] == {"disable": True}


def test_compose__web_is_published_on_loopback_only_for_the_hosts_proxy(services):
    assert services["web"]["ports"] == ["127.0.0.1:8000:8000"]
    for name in set(services) - {"web"}:
        assert "ports" not in services[name], name


def test_compose__stop_grace_covers_the_drain(services):
    # SIGTERM drains: REALTIME_SHUTDOWN_GRACE for the frames in flight, as long again for
    # the clients to go (docs/operations.md), and a margin
    assert _seconds(services["web"]["stop_grace_period"]) >= 2 * DOCUMENTED_GRACE_S + 5
    assert _seconds(services["worker"]["stop_grace_period"]) >= 30 + 5  # a scaling command


def test_compose__wedsync_processes_share_one_pid_namespace_and_metrics_folder(services):
    for name in WEDSYNC:
        service = services[name]
        assert service["pid"] == "service:pidns", name
        assert service["depends_on"]["pidns"]["condition"] == "service_started", name
        folder = service["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert f"metrics:{folder}" in service["volumes"], name
    assert services["pidns"]["init"] is True


def test_compose__sets_only_variables_the_configuration_doc_names(services):
    documented = set(documented_variables())
    for name in WEDSYNC:
        service = services[name]
        names = set(service["environment"])
        for path in _env_files(service):
            example = path.with_name(path.name + ".example")
            assert example.is_file(), f"{path.name} has no example beside it"
            names |= set(env_file(example))
        assert names <= documented, f"{name}: {sorted(names - documented)} undocumented"


def test_compose__env_file_examples_say_what_production_needs():
    site = env_file(BASE_DIR / "deploy/compose/wedsync.env.example")
    postgres = env_file(BASE_DIR / "deploy/compose/postgres.env.example")

    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS"} <= set(site)
    assert site["DJANGO_DEBUG"] == "false"
    assert int(site["WEB_CONCURRENCY"]) >= int(site["SERVER_WORKERS"])
    # the database URL names the compose service and the credentials postgres.env sets
    url = urlsplit(site["DATABASE_URL"])
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert (url.username, url.password) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"],
    )  # fmt: skip
    assert url.path == "/" + postgres["POSTGRES_DB"]
    # the filled-in copies are kept out of git
    ignored = (BASE_DIR / "deploy/compose/.gitignore").read_text().split()
    assert "*.env" in ignored


def test_compose__forwarded_headers_are_believed_from_the_networks_gateway_only(compose):
    (network,) = compose["networks"]["default"]["ipam"]["config"]
    trusted = compose["x-wedsync-env"]["FORWARDED_ALLOW_IPS"].split(",")

    assert trusted == [network["gateway"]]
    assert ipaddress.ip_address(network["gateway"]) in ipaddress.ip_network(network["subnet"])


def test_compose__redis_url_names_the_redis_service(services):
    for name in WEDSYNC:
        url = urlsplit(services[name]["environment"]["REDIS_URL"])
        assert url.hostname == "redis" and url.scheme == "redis", name
