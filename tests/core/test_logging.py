"""Log lines (core/logging.py): JSON or plain, with the request id, the WebSocket
connection and its user, the Celery task; never a credential, on any handler; the admins'
error mail and Sentry events scrubbed the same way.

The server and the worker are real processes, started as production starts them: their
log files are read back line by line.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from channels.db import database_sync_to_async
from django.core import mail
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.urls import path
from django_guid.context import guid
from websockets.asyncio.client import connect

import tests.servers
from core.logging import (
    CONTEXT_FIELDS,
    REDACTED,
    JsonFormatter,
    LogContext,
    PlainFormatter,
    RedactTokens,
    bind_connection,
    scrub_event,
)
from realtime.tokens import token_issue
from tests.factories import make_user
from tests.servers import BASE_DIR, Server, test_database_url
from wedsync.server.asgi_server import asgi_server_command

TOKEN = "eyJ1c2VyIjo0Mn0.c2VjcmV0LXNpZ25hdHVyZQ"  # shaped like a realtime token


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    """A logger of its own writing through a handler set up like settings.LOGGING's."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(LogContext())
    handler.addFilter(RedactTokens())
    logger = logging.getLogger(f"test.logging.{uuid.uuid4().hex}")
    logger.handlers, logger.propagate, logger.level = [handler], False, logging.DEBUG
    return logger, stream


def log_everywhere(logger: logging.Logger) -> None:
    """A credential in each place a record carries text: message, arguments, extra
    fields, exception."""
    logger.info("GET /ws/realtime/?token=%s", TOKEN)
    logger.info("%s - %s", "127.0.0.1:5", f"Authorization: Bearer {TOKEN}")
    logger.warning("handshake refused", extra={"url": f"/ws/realtime/?ticket={TOKEN}"})
    try:
        raise ValueError(f"cannot verify Bearer {TOKEN}")
    except ValueError:
        logger.exception("failed for /api/?token=%s", TOKEN)


# --- format and redaction, on each handler kind ------------------------------------------


def test_json_handler__every_line_parses_and_no_credential_survives():
    # given a logger writing through the JSON formatter and the handlers' filters
    logger, stream = capture(JsonFormatter())

    # when a credential is logged in a message, an argument, an extra field, a traceback
    log_everywhere(logger)

    # then each line is one JSON object, the credential is nowhere, the text is kept
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 4
    assert TOKEN not in stream.getvalue()
    assert lines[0]["message"] == f"GET /ws/realtime/?token={REDACTED}"
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == logger.name
    assert lines[0]["time"].endswith("+00:00") and lines[0]["process"] == os.getpid()
    assert lines[1]["message"] == f"127.0.0.1:5 - Authorization: Bearer {REDACTED}"
    assert lines[2]["url"] == f"/ws/realtime/?ticket={REDACTED}"
    assert f"ValueError: cannot verify Bearer {REDACTED}" in lines[3]["exc_info"]


def test_plain_handler__readable_with_context_and_no_credential():
    # given a logger writing through the plain formatter, inside a request
    logger, stream = capture(PlainFormatter())
    token = guid.set("4f0c5e7d2b9a4c1e8f3d6a7b5c4e3d2f")
    try:
        # when credentials are logged
        log_everywhere(logger)
    finally:
        guid.reset(token)

    # then the lines read as before, with the request id, and without the credential
    text = stream.getvalue()
    assert TOKEN not in text
    first = text.splitlines()[0]
    assert first.endswith(
        f"INFO {logger.name}: GET /ws/realtime/?token={REDACTED} "
        "[request_id=4f0c5e7d2b9a4c1e8f3d6a7b5c4e3d2f]"
    )
    assert f"ValueError: cannot verify Bearer {REDACTED}" in text


def test_json_access_line__structured_fields_redacted():
    # given uvicorn's access record, as its protocol logs it
    logger, stream = capture(JsonFormatter())
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", f"/healthz?token={TOKEN}", "1.1", 200), None,
    )  # fmt: skip

    # when the handler writes it
    logger.handlers[0].handle(record)

    # then its fields are there, the path redacted
    line = json.loads(stream.getvalue())
    assert line["message"] == f'127.0.0.1:5 - "GET /healthz?token={REDACTED} HTTP/1.1" 200'
    assert (line["method"], line["path"], line["status"]) == (
        "GET", f"/healthz?token={REDACTED}", 200,
    )  # fmt: skip


# --- context -------------------------------------------------------------------------------


async def test_connection_context__its_task_and_children_only():
    # given two connections, each bound at the start of its own task
    logger, stream = capture(JsonFormatter())

    class User:
        pk = 42

    async def connection(conn_id: str, user: Any) -> None:
        bind_connection(conn_id, user)
        logger.info("connected")
        await asyncio.create_task(asyncio.sleep(0))  # a task it starts
        child = asyncio.create_task(asyncio.to_thread(logger.info, "from its thread"))
        await child

    # when both run side by side, and something logs outside them
    await asyncio.gather(connection("a" * 32, User()), connection("b" * 32, None))
    logger.info("outside")

    # then each line of a connection carries its id (and its user, when there is one)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line.get("conn_id") == "a" * 32]
    theirs = [line for line in lines if line.get("conn_id") == "b" * 32]
    assert [line["user_id"] for line in mine] == [42, 42]
    assert len(theirs) == 2 and all("user_id" not in line for line in theirs)
    assert not set(CONTEXT_FIELDS) & set(lines[-1])


def test_celery_task_context__task_id_and_name_on_its_lines():
    # given a task that logs, run by Celery's tracer in this process
    from wedsync.celery import app

    logger, stream = capture(JsonFormatter())

    @app.task(name="tests.core.test_logging.logs_a_line")
    def logs_a_line() -> None:
        logger.info("inside the task")

    # when it runs
    result = logs_a_line.apply()
    logger.info("after it")

    # then its line carries the task's id and name, the next one neither
    inside, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["task_id"] == result.id
    assert inside["task_name"] == "tests.core.test_logging.logs_a_line"
    assert "task_id" not in after


# --- the admins' error mail --------------------------------------------------------------


def _boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError(f"upstream refused Bearer {TOKEN}")


urlpatterns = [path("boom/", _boom)]


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__, ADMINS=[("Ops", "ops@example.com")])
def test_admin_error_mail__sent_without_a_credential():
    # given the admins named, and a view that fails on a request carrying credentials
    client = Client(raise_request_exception=False)

    # when it is requested with a token in its query and a Bearer header
    response = client.get(
        f"/boom/?token={TOKEN}&ticket={TOKEN}&page=2", HTTP_AUTHORIZATION=f"Bearer {TOKEN}"
    )

    # then the admins get the report, which names the request and carries no credential
    assert response.status_code == 500
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["ops@example.com"]
    text = message.subject + message.body
    assert "RuntimeError" in text and "/boom/" in text and "page" in text
    assert TOKEN not in text


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=__name__, ADMINS=[])
def test_admin_error_mail__nothing_without_admins():
    Client(raise_request_exception=False).get("/boom/")
    assert mail.outbox == []


# --- Sentry --------------------------------------------------------------------------------


def test_sentry_scrub__no_credential_anywhere_in_an_event():
    # given an event as Sentry's Django and logging integrations build one
    event = {
        "message": f"GET /ws/realtime/?token={TOKEN}",
        "logentry": {"message": "failed for %s", "params": [f"/x?ticket={TOKEN}"]},
        "request": {
            "url": "https://wedsync.example.com/api/weddings/7/",
            "query_string": f"token={TOKEN}&page=2",
            "headers": {"Authorization": f"Bearer {TOKEN}", "X-Request-ID": "abc"},
            "cookies": {"sessionid": TOKEN},
        },
        "exception": {"values": [{"type": "ValueError", "value": f"bad Bearer {TOKEN}"}]},
        "breadcrumbs": {"values": [{"message": f"GET /?token={TOKEN}", "category": "log"}]},
        "extra": {"token": TOKEN, "headers": [["Authorization", TOKEN]], "count": 3},
    }

    # when it is scrubbed before sending
    scrubbed = scrub_event(event, {})

    # then the credential is nowhere, everything else is kept
    assert TOKEN not in json.dumps(scrubbed)
    assert scrubbed["request"]["query_string"] == f"token={REDACTED}&page=2"
    assert scrubbed["request"]["headers"]["X-Request-ID"] == "abc"
    assert scrubbed["request"]["url"] == event["request"]["url"]
    assert scrubbed["extra"]["count"] == 3
    assert scrubbed["exception"]["values"][0]["type"] == "ValueError"


_SENTRY_PROBE = """
import logging, os, django
django.setup()
import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration
from sentry_sdk.integrations.django import DjangoIntegration
from sentry_sdk.transport import Transport

sent = []

class Capture(Transport):  # stands in for the network: the events as they would leave
    def capture_envelope(self, envelope):
        sent.append(envelope.serialize().decode())

client = sentry_sdk.get_client()
assert client.get_integration(DjangoIntegration) and client.get_integration(CeleryIntegration)
client.transport = Capture(client.options)
token = os.environ["PROBE_TOKEN"]
logging.getLogger("probe").error("refused /ws/realtime/?ticket=%s", token)
try:
    raise ValueError("cannot verify Bearer " + token)
except ValueError:
    sentry_sdk.capture_exception()
sentry_sdk.flush()

import asyncio
from core.logging import bind_connection

async def first_connection():  # the server's first WebSocket: the loop gets watched
    bind_connection("c" * 32, None)
    return asyncio.get_running_loop().get_task_factory()

assert getattr(asyncio.run(first_connection()), "_is_sentry_task_factory", False)
assert "asyncio" in client.integrations
print("\\n".join(sent))
"""


def test_sentry__on_with_a_dsn_and_what_it_sends_has_no_credential():
    # given a process whose settings name a Sentry DSN (events caught before the network)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "wedsync.settings",
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_DEBUG": "true",
        "SENTRY_DSN": "https://public@sentry.example.invalid/1",
        "PROBE_TOKEN": TOKEN,
    }

    # when it logs an error and captures an exception, both quoting a credential
    result = subprocess.run(
        [sys.executable, "-c", _SENTRY_PROBE], cwd=BASE_DIR, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    # then Django's, Celery's and asyncio's integrations are on (the probe asserts it),
    # and both events were sent, scrubbed
    assert result.returncode == 0, result.stderr
    assert "refused /ws/realtime/?ticket=" in result.stdout
    assert f"cannot verify Bearer {REDACTED}" in result.stdout
    assert TOKEN not in result.stdout


def test_sentry__off_without_a_dsn():
    import sentry_sdk

    assert not sentry_sdk.get_client().is_active()


# --- settings ------------------------------------------------------------------------------


def _settings_in_a_process(**env: str) -> subprocess.CompletedProcess[str]:
    probe = "from django.conf import settings; print(repr(settings.ADMINS), settings.LOG_FORMAT)"
    return subprocess.run(
        [sys.executable, "-c", probe], cwd=BASE_DIR, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "wedsync.settings",
             "DJANGO_READ_DOT_ENV_FILE": "false", "DJANGO_DEBUG": "true", **env},
    )  # fmt: skip


def test_settings__admins_and_log_format_from_the_environment():
    # given admins as people write them, a comma in a name included
    admins = 'Ops Team <ops@example.com>, "Doe, Jane" <jane@example.com>'

    # when the settings load: the admins are pairs, the format plain with DEBUG
    result = _settings_in_a_process(DJANGO_ADMINS=admins)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == (
        "[('Ops Team', 'ops@example.com'), ('Doe, Jane', 'jane@example.com')] plain"
    )
    # and JSON without DEBUG (production shape)
    production = _settings_in_a_process(DJANGO_DEBUG="false", DJANGO_SECRET_KEY="x" * 50)
    assert production.stdout.split()[-1] == "json", production.stderr

    # then a name without an address, or an unknown format, stops the start
    for bad in ({"DJANGO_ADMINS": "Ops Team"}, {"LOG_FORMAT": "xml"}):
        result = _settings_in_a_process(**bad)
        assert result.returncode != 0 and "ImproperlyConfigured" in result.stderr, bad


# --- a real server process -------------------------------------------------------------------


@pytest.fixture
def json_server(monkeypatch: pytest.MonkeyPatch):
    """A server process in production shape, logging JSON at info (its access log on)."""
    monkeypatch.setattr(
        tests.servers,
        "asgi_server_command",
        functools.partial(asgi_server_command, log_level="info"),
    )
    server = Server("uvicorn", LOG_LEVEL="INFO", LOG_FORMAT="json")
    try:
        yield server
    finally:
        server.stop()


def http_get(server: Server, url: str, headers: dict[str, str] | None = None
             ) -> tuple[int, str | None]:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request("GET", url, headers={"Host": "127.0.0.1", **(headers or {})})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Request-ID")
    finally:
        conn.close()


def log_lines(server: Server, until: Any, timeout: float = 15
              ) -> tuple[list[dict[str, Any]], str]:  # fmt: skip
    """Every line the server wrote, each parsed as JSON (a line that is not fails the
    test), and the text, once ``until(lines)`` holds (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        text = Path(server.log.name).read_text(errors="replace")
        lines = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        if until(lines):
            return lines, text
        assert time.monotonic() < deadline, text[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
async def test_server_process__json_lines_with_request_and_connection_ids_no_token(json_server):
    server = json_server
    user = await database_sync_to_async(make_user)()
    token = await database_sync_to_async(token_issue)(user=user)
    mine = uuid.uuid4().hex

    # when an HTTP request comes with an X-Request-ID (and a token in its query) ...
    status, echoed = await asyncio.to_thread(
        http_get, server, f"/healthz?token={token}", {"X-Request-ID": mine}
    )
    # ... one fails (a 404 logs a warning of its own) ...
    missing, made = await asyncio.to_thread(http_get, server, f"/nope?token={token}")
    # ... one brings an id that is not one
    _, replaced = await asyncio.to_thread(
        http_get, server, "/healthz", {"X-Request-ID": 'x" injected=1'}
    )
    # ... and a WebSocket connects with the token and pings
    async with connect(f"{server.ws_url}?token={token}") as ws:
        await ws.send('{"type":"ping","ref":"p"}')
        while orjson.loads(await asyncio.wait_for(ws.recv(), 15)).get("ref") != "p":
            pass

    # then the responses carry the request ids: the client's, else one made here
    assert (status, echoed) == (200, mine)
    assert missing == 404 and made and len(made) == 32 and made != mine
    assert replaced and replaced != 'x" injected=1'

    def complete(lines: list[dict[str, Any]]) -> bool:
        return any("WebSocket /ws/realtime/" in line["message"] for line in lines) and any(
            line.get("request_id") == replaced for line in lines
        )

    lines, text = await asyncio.to_thread(log_lines, server, complete)
    # and every line is JSON (log_lines parsed each), no token in any
    assert token not in text
    assert token.split(".")[0] not in text
    # the access lines carry the request id, the path redacted
    access = {line.get("request_id"): line for line in lines if line["logger"] == "uvicorn.access"}
    assert access[mine]["path"] == f"/healthz?token={REDACTED}"
    assert access[mine]["status"] == 200
    assert access[made]["status"] == 404
    # so does the application's own line about the request (Django's "Not Found")
    (not_found,) = [line for line in lines if line["logger"] == "django.request"]
    assert not_found["request_id"] == made and not_found["level"] == "WARNING"
    # the WebSocket's lines carry its connection id and user id
    (handshake,) = [line for line in lines if "WebSocket /ws/realtime/" in line["message"]]
    assert handshake["message"].endswith(f'/ws/realtime/?token={REDACTED}" [accepted]')
    assert len(handshake["conn_id"]) == 32 and handshake["user_id"] == user.pk
    assert "request_id" not in handshake


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.django_db(transaction=True)
def test_celery_worker_process__task_lines_carry_the_task_id(tmp_path: Path):
    # given a worker as production starts it, logging JSON, on a broker of its own
    from celery import Celery

    broker = tmp_path / "broker"
    options = {
        "data_folder_in": str(broker / "queue"),
        "data_folder_out": str(broker / "queue"),
        "processed_folder": str(broker / "processed"),
        "control_folder": str(broker / "control"),
        "store_processed": False,
    }
    for folder in ("queue", "processed", "control"):
        (broker / folder).mkdir(parents=True)
    env = {
        **os.environ,
        "DJANGO_READ_DOT_ENV_FILE": "false",
        "DJANGO_DEBUG": "true",
        "LOG_FORMAT": "json",
        "REDIS_URL": "",  # the embedded default: kombu's filesystem broker
        "CELERY_BROKER_DIR": str(broker),
        "DATABASE_URL": test_database_url(),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(Path(sys.executable).parent / "celery"), "-A", "wedsync", "--quiet", "worker",
             "--pool", "solo", "-l", "info", "--without-heartbeat", "--without-gossip",
             "--without-mingle"],
            cwd=BASE_DIR, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        # Not the current app: tasks defined elsewhere (shared_task) must keep sending to the
        # project's broker in the rest of this test run.
        sender = Celery(
            "sender", broker="filesystem://", broker_transport_options=options, set_as_current=False
        )
    try:
        # when a task that logs is sent to it
        task_id = sender.send_task("realtime.tasks.prune_event_log").id

        # then every line it writes is JSON (--quiet: no banner), and the task's line
        # carries the task's id and name
        deadline = time.monotonic() + 60
        while True:
            lines = [json.loads(raw) for raw in log.read_text().splitlines() if raw.strip()]
            done = [line for line in lines if "prune_event_log deleted" in line["message"]]
            if done:
                break
            assert worker.poll() is None and time.monotonic() < deadline, lines[-20:]
            time.sleep(0.2)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(15)
    assert (done[0]["task_id"], done[0]["task_name"]) == (
        task_id, "realtime.tasks.prune_event_log",
    )  # fmt: skip
