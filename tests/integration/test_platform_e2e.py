"""The platform integration end to end, with real processes (docs/integration.md, "From
zero to a wedding's events in your backend"; ADRs 0021, 0023, 0024).

One server process (``tests.servers.Server``) and one Celery worker process
(``celery -A wedsync worker``) share this run's PostgreSQL database and Redis, as in
production. The "platform backend" holds only what the walkthrough gives it: an API key
(made by the walkthrough's own shell command, printed once) and JWTs it signs itself with
the shared HS256 secret, shaped as Supabase's (``aud``/``role: authenticated``, ``sub``,
``email``, ``exp``). Its webhook receiver is an ``http.server`` in a thread that checks
every Standard Webhooks signature with the walkthrough's ``verify`` and fails the first
attempts. The walkthrough's Python blocks, its ``manage.py shell`` commands and its curl
command are read from the doc and run here, so the doc cannot drift from what works.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
import redis
from django.conf import settings
from django.test import Client
from websockets.sync.client import connect

from core.cache import reset_cache
from realtime.models import ApiKey, Event
from tests import servers
from tests.factories import make_booking, make_supplier, make_user, make_wedding
from webhooks import selectors
from webhooks.models import Delivery

pytestmark = [
    pytest.mark.slow,
    pytest.mark.redis,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(90),  # the first test also starts the server and the worker
]

DOC = servers.BASE_DIR / "docs" / "integration.md"
WALKTHROUGH = "## From zero to a wedding's events in your backend"
DOC_SERVER = "https://realtime.example.com"
DOC_RECEIVER = "https://payments.example.com/hooks/wedsync"
# The platform's shared secret (Supabase's legacy JWT secret) and its issuer.
JWT_SECRET = "the-platform-jwt-secret-of-at-least-32-bytes"
ISSUER = "https://platform.supabase.test/auth/v1"
# The server, the worker and this process share one cache namespace: a revocation made
# here reaches the server, and the worker clears the webhook kicks the server sets.
NAMESPACE = f"test-platform-{uuid.uuid4().hex[:8]}"
EVENTS = 6
FAIL_FIRST = 2  # attempts the receiver answers 500 before it accepts


# --- the walkthrough, read from the doc ----------------------------------------------------


def walkthrough() -> str:
    text = DOC.read_text()
    start = text.index(WALKTHROUGH)
    end = text.find("\n## ", start + len(WALKTHROUGH))
    return text[start : end if end != -1 else None]


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", walkthrough(), re.DOTALL)


def doc_python() -> dict[str, Any]:
    """The walkthrough's Python blocks run into one namespace (``publish``, ``verify``)."""
    namespace: dict[str, Any] = {}
    for block in doc_blocks("python"):
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 -- the doc's own code
    return namespace


def doc_shell(index: int, **replace: str) -> str:
    """What the walkthrough's ``index``-th ``python manage.py shell -c`` prints, its code
    run here (in this process: the same database and services)."""
    commands = re.findall(r'python manage\.py shell -c "\n(.*?)"', walkthrough(), re.DOTALL)
    code = commands[index]
    for old, new in replace.items():
        code = code.replace(old, new)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), {})  # noqa: S102 -- the doc's own code
    return out.getvalue().strip()


def doc_curl(base_url: str, wedding_id: int, api_key: str) -> tuple[int, dict[str, Any]]:
    """The walkthrough's curl publish, run by bash against the server; (status, body)."""
    (command,) = [b for b in doc_blocks("sh") if b.startswith("curl ")]
    command = command.split("\n# ")[0].replace(DOC_SERVER, base_url)
    command = command.replace("/weddings/12/", f"/weddings/{wedding_id}/")
    command += ' -w "\\n%{http_code}"'
    done = subprocess.run(
        ["bash", "-c", command],
        env={**os.environ, "WEDSYNC_API_KEY": api_key},
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


# --- the processes ------------------------------------------------------------------------


class Worker:
    """``celery -A wedsync worker`` on this run's Redis and database, in production shape,
    with fast webhook retries (1 s apart, so the failed first attempts cost the test 2 s)."""

    def __init__(self) -> None:
        self.metrics = tempfile.mkdtemp(prefix="wedsync-worker-metrics-")
        self.log_path = servers.BASE_DIR / "var" / f"e2e-worker-{os.getpid()}.log"
        env = {
            **os.environ,
            **servers.production_env(),
            "DATABASE_URL": servers.test_database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_NAMESPACE": NAMESPACE,
            "PROMETHEUS_MULTIPROC_DIR": self.metrics,
            "WEBHOOKS_ALLOW_PRIVATE": "true",  # the receiver is on 127.0.0.1
            "WEBHOOKS_TIMEOUT": "3",
            "WEBHOOKS_BACKOFF_BASE": "1",
            "WEBHOOKS_BACKOFF_MAX": "1",
            "LOG_LEVEL": "WARNING",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "wedsync", "worker", "--pool", "solo",
             "-l", "info", "--without-heartbeat", "--without-gossip", "--without-mingle"],
            cwd=servers.BASE_DIR, env=env, stdin=subprocess.DEVNULL,
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while "ready." not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.output()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Cold shutdown: by now the worker has nothing left to do.
            os.killpg(self.proc.pid, signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@pytest.fixture(scope="module")
def stack(django_db_setup: Any, django_db_blocker: Any) -> Iterator[servers.Server]:
    """One server and one worker for the module (started side by side)."""
    # Tasks an earlier run queued on this Redis database would be this worker's first.
    redis.Redis.from_url(settings.REDIS_URL).delete("celery")
    worker = Worker()
    try:
        server = servers.Server(
            "uvicorn",
            CACHE_NAMESPACE=NAMESPACE,
            REALTIME_JWT_SECRET=JWT_SECRET,
            REALTIME_JWT_ISSUER=ISSUER,
        )
        try:
            worker.wait_ready()
            yield server
        finally:
            server.stop()
    finally:
        worker.stop()


@pytest.fixture(autouse=True)
def shared_namespace(settings: Any) -> None:
    settings.CACHE_NAMESPACE = NAMESPACE
    reset_cache()


class Receiver:
    """The platform's webhook endpoint: 401 unless the walkthrough's ``verify`` accepts
    the signature, 500 for the first ``fail_first`` attempts, then 204. Records every
    verified attempt and every accepted message (topic, seq, webhook-id, body), and
    checks that ``verify`` refuses a copy of each with one byte more in its body."""

    def __init__(self, verify: Any, fail_first: int) -> None:
        self.secret = ""
        self.attempts: list[tuple[str, int, str]] = []
        self.accepted: list[tuple[str, int, str, dict[str, Any]]] = []
        self.rejected = 0
        self.forgeries = 0  # tampered copies of a signed message that ``verify`` accepted
        receiver, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    status = receiver.handle(verify, self.headers, body, fail_first)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/wedsync"
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def handle(self, verify: Any, headers: Any, body: bytes, fail_first: int) -> int:
        if not verify(self.secret, headers, body):
            self.rejected += 1
            return 401
        if verify(self.secret, headers, body.replace(b'"seq":', b'"seq": ')):
            self.forgeries += 1
        message = json.loads(body)
        entry = (message["topic"], message["seq"], headers["webhook-id"])
        self.attempts.append(entry)
        if len(self.attempts) <= fail_first:
            return 500
        self.accepted.append((*entry, message))
        return 204

    def wait_accepted(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.accepted) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    selectors.endpoints_active_forget()
    running = Receiver(doc_python()["verify"], FAIL_FIRST)
    yield running
    running.close()


# --- the platform's side ------------------------------------------------------------------


def platform_jwt(sub: str, email: str) -> str:
    """An access token as Supabase Auth issues it, signed by the platform's backend."""
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": sub, "aud": "authenticated", "role": "authenticated",
              "email": email, "iat": now, "exp": now + 3600}  # fmt: skip
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def vendor_on(wedding: Any, email: str) -> Any:
    """A platform user who is a WedSync vendor booked on ``wedding`` (known by email)."""
    user = make_user(email=email)
    make_booking(supplier=make_supplier(users=(user,)), wedding=wedding)
    return user


def http(server: servers.Server, method: str, path: str, credential: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}",
        data=b"" if method == "POST" else None,
        headers={"Authorization": f"Bearer {credential}"},
        method=method,
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 -- http://
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


class Socket:
    """A raw WebSocket of the platform's app, with request/reply by ``ref``."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.refs = iter(range(1, 1000))

    def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        ref = str(next(self.refs))
        self.ws.send(json.dumps({**frame, "ref": ref}))
        while True:
            reply = self.recv(10)
            if reply.get("ref") == ref:
                return reply

    def recv(self, timeout: float) -> dict[str, Any]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        if frame["type"] == "event":
            self.events.append(frame)
        return frame

    def wait_events(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.events) < count and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                self.recv(max(0.01, deadline - time.monotonic()))


@contextlib.contextmanager
def app_socket(url: str) -> Iterator[Socket]:
    with connect(url, open_timeout=10) as ws:
        yield Socket(ws)


def create_api_key() -> str:
    """The walkthrough's shell command: the key, printed once."""
    printed = doc_shell(0)
    assert re.fullmatch(r"wsk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", printed), printed
    return printed


# --- the scenario -------------------------------------------------------------------------


def test_platform__publishes_with_its_key__user_and_webhook_get_every_event_in_order(
    stack: servers.Server, receiver: Receiver
) -> None:
    # given a wedding with a vendor known to the platform by email, the key and the
    # endpoint made by the walkthrough's commands (each printed once), and its code
    wedding = make_wedding()
    topic = f"wedding:{wedding.pk}"
    vendor_on(wedding, "fleur@petals.example")
    api_key = create_api_key()
    endpoint_id, receiver.secret = doc_shell(1, **{DOC_RECEIVER: receiver.url}).split()
    assert receiver.secret.startswith("whsec_")
    code = doc_python()
    code["WEDSYNC_URL"] = f"http://127.0.0.1:{stack.port}"

    # and the vendor's app connected with a ticket bought with their JWT, subscribed
    token = platform_jwt(str(uuid.uuid4()), "Fleur@Petals.example")
    status, bought = http(stack, "POST", "/api/realtime/ticket", token)
    assert status == 200, bought
    with app_socket(f"{stack.ws_url}?ticket={bought['ticket']}") as app:
        reply = app.request({"type": "subscribe", "topics": {topic: {}}})
        assert reply["status"] == "ok", reply
        assert reply["topics"][topic]["seq"] == 0

        # when the backend publishes: the walkthrough's curl, then its Python function,
        # one publish retried with the same idempotency key
        status, first = doc_curl(code["WEDSYNC_URL"], wedding.pk, api_key)
        assert (status, first["seq"], first["actor"]["name"]) == (201, 1, "payments"), first
        answers = [
            code["publish"](
                api_key, wedding.pk, "message.posted", {"text": f"update {n}"}, f"pay-{n}"
            )
            for n in range(2, EVENTS + 1)
        ]
        retried = code["publish"](
            api_key, wedding.pk, "message.posted", {"text": "update 3"}, "pay-3"
        )

        # then each publish got the next seq, and the retry the first one's, stored once
        assert [a["seq"] for a in answers] == list(range(2, EVENTS + 1))
        assert retried["seq"] == 3 and retried["duplicate"] is True
        assert Event.objects.filter(topic=topic).count() == EVENTS

        # and the vendor's app received every event, in seq order
        app.wait_events(EVENTS)
        assert [e["seq"] for e in app.events] == list(range(1, EVENTS + 1))
        assert [e["payload"]["text"] for e in app.events[1:]] == [
            f"update {n}" for n in range(2, EVENTS + 1)
        ]

        # and the webhook receiver got every one, signed, in seq order, exactly once, the
        # first after FAIL_FIRST failed attempts (retried with the same webhook-id) while
        # the others waited behind it
        receiver.wait_accepted(EVENTS)
        assert (receiver.rejected, receiver.forgeries) == (0, 0)
        assert [(t, s) for t, s, _, _ in receiver.accepted] == [
            (topic, seq) for seq in range(1, EVENTS + 1)
        ], receiver.attempts
        assert [seq for _, seq, _ in receiver.attempts] == [1] * (FAIL_FIRST + 1) + list(
            range(2, EVENTS + 1)
        )
        assert len({msg_id for _, _, msg_id in receiver.attempts[: FAIL_FIRST + 1]}) == 1
        assert len({msg_id for _, _, msg_id, _ in receiver.accepted}) == EVENTS
        same = ("topic", "seq", "event", "payload", "actor", "ts")
        assert [{k: m["data"][k] for k in same} for *_, m in receiver.accepted] == [
            {k: e[k] for k in same} for e in app.events
        ]
        # and, all that time later, still nothing twice on the WebSocket
        app.wait_events(EVENTS + 1, timeout=0.2)
        assert len(app.events) == EVENTS

    # nothing is left to send (so nothing will arrive twice)
    deliveries = Delivery.objects.filter(endpoint_id=int(endpoint_id)).order_by("seq")
    assert [(d.seq, d.status) for d in deliveries] == [
        (seq, Delivery.Status.DELIVERED) for seq in range(1, EVENTS + 1)
    ]
    assert deliveries[0].attempts == FAIL_FIRST + 1


def test_platform__a_jwt_of_another_weddings_user__cannot_subscribe_or_read(
    stack: servers.Server,
) -> None:
    # given two weddings, and a platform user booked only on the second
    ours, theirs = make_wedding(), make_wedding()
    vendor_on(theirs, "cake@bakery.example")
    token = platform_jwt(str(uuid.uuid4()), "cake@bakery.example")

    # when they connect with their JWT in ?token= and subscribe to both weddings
    with app_socket(f"{stack.ws_url}?token={token}") as app:
        refused = app.request({"type": "subscribe", "topics": {f"wedding:{ours.pk}": {}}})
        allowed = app.request({"type": "subscribe", "topics": {f"wedding:{theirs.pk}": {}}})

    # then ours is refused as the protocol says (forbidden, not available), theirs is not
    assert (refused["status"], refused["code"]) == ("error", "forbidden"), refused
    assert allowed["status"] == "ok", allowed
    # and over HTTP ours is 404 (as a wedding that does not exist), theirs 200
    status, body = http(stack, "GET", f"/api/weddings/{ours.pk}/events", token)
    assert (status, body["error"]["code"]) == (404, "not_found"), body
    assert http(stack, "GET", f"/api/weddings/{theirs.pk}/events", token)[0] == 200


def test_platform__a_revoked_api_key__is_refused_at_once(stack: servers.Server) -> None:
    # given a key that may read and publish, working against the server
    wedding = make_wedding()
    api_key = create_api_key()
    row = ApiKey.objects.get(prefix=api_key.split("_")[1])
    ApiKey.objects.filter(pk=row.pk).update(can_read=True)
    path = f"/api/weddings/{wedding.pk}/events"
    assert http(stack, "GET", path, api_key)[0] == 200

    # when staff revoke it in the admin
    staff = Client()
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    response = staff.post(
        "/admin/realtime/apikey/", {"action": "revoke", "_selected_action": [row.pk]}
    )
    assert response.status_code == 302

    # then its very next request, a read or a publish, is refused with 401
    status, body = http(stack, "GET", path, api_key)
    assert (status, body["error"]["code"]) == (401, "unauthenticated"), body
    code = doc_python()
    code["WEDSYNC_URL"] = f"http://127.0.0.1:{stack.port}"
    with pytest.raises(urllib.error.HTTPError) as refused:
        code["publish"](api_key, wedding.pk, "message.posted", {"text": "late"}, "pay-late")
    assert refused.value.code == 401
    assert not Event.objects.filter(topic=f"wedding:{wedding.pk}").exists()
