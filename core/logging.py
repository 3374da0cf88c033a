"""Log lines the way operators read them, in every process (server, Celery, commands).

* **What a line belongs to.** ``LogContext`` (a filter on every handler) puts on each
  record whichever applies: ``request_id`` (the HTTP request's ``X-Request-ID``, taken
  from the proxy or made by django-guid's middleware, and sent back), ``conn_id`` and
  ``user_id`` (the WebSocket connection, bound by ``bind_connection`` at the start of
  the consumer: its task and the tasks it starts carry them), ``task_id`` and
  ``task_name`` (the Celery task running).
* **Format.** ``JsonFormatter``, one JSON object a line (``LOG_FORMAT=json``, the default
  in production shape), or ``PlainFormatter`` (readable, the default with
  ``DJANGO_DEBUG=true``). uvicorn's loggers, its access log included, write through the
  same handlers (``wedsync.server.serve.log_config``).
* **No credential in a line.** ``RedactTokens`` (a filter on every handler) replaces the
  value of every ``token=`` / ``ticket=`` parameter and ``Bearer`` credential in the
  message, its arguments, extra fields and traceback. The admins' error mail
  (``AdminEmailHandler``) and Sentry events (``scrub_event``) get the same treatment.

Nothing here reads Django's settings at import: the server's supervisor uses
``RedactTokens`` without setting Django up.
"""

from __future__ import annotations

import datetime as dt
import logging
import logging.config
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from django.utils.log import AdminEmailHandler as DjangoAdminEmailHandler
from django_guid.context import guid as _request_id
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter


def configure(config: dict[str, Any]) -> None:
    """``settings.LOGGING_CONFIG``: apply settings.LOGGING, and send Python's warnings
    (a deprecation, Celery's warning about running as root) through it as ``py.warnings``
    records, so that a JSON log holds nothing but JSON lines."""
    logging.config.dictConfig(config)
    logging.captureWarnings(True)


# --- credentials out of every line -------------------------------------------------------

# ``token=<value>`` and ``ticket=<value>`` anywhere (``?token=``, ``&access_token=``,
# ``csrftoken=``, ``?ticket=`` alike; the value runs to the next separator of a URL,
# header or log line), and a ``Bearer`` credential (at least 8 characters, so that prose
# such as "a Bearer token" stays).
_TOKEN_VALUE = re.compile(r"((?i:token|ticket)=)[^\s&;,\"'<>#]+|(Bearer\s+)[A-Za-z0-9_\-.=~+/]{8,}")
REDACTED = "[redacted]"
# Names whose value is a credential wherever it appears as a key (query parameters,
# headers, JSON fields of a Sentry event).
_SECRET_NAME = re.compile(r"(?i)token|ticket|authorization|cookie|password|secret|sessionid")
# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def redact_tokens(text: str) -> str:
    """``text`` with the value of every ``token=`` and ``ticket=`` parameter and
    ``Bearer`` credential replaced by ``[redacted]``."""
    return _TOKEN_VALUE.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


def _redact_arg(value: Any) -> Any:
    return redact_tokens(value) if isinstance(value, str) else value


class RedactTokens(logging.Filter):
    """A logging filter that keeps realtime tokens and connect tickets (credentials) out
    of every log line: uvicorn's access log writes ``GET /ws/realtime/?token=...`` (or
    ``?ticket=...``) in full, and anything else may log a URL, a header or an exception
    that quotes one. Installed on every handler of settings.LOGGING (which uvicorn's
    loggers write through too), so it sees every record they write, whichever logger it
    came from. The record keeps its level, logger and arguments (each redacted, so the
    JSON access log keeps its fields); only text changes."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(a) for a in args)
        elif isinstance(args, Mapping):
            record.args = {k: _redact_arg(v) for k, v in args.items()}
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler to report
            return True
        redacted = redact_tokens(message)
        if redacted != message:  # in the format itself ("?token=%s"), or a non-str argument
            record.msg, record.args = redacted, None
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and isinstance(value, str):
                record.__dict__[key] = redact_tokens(value)
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set: the traceback, redacted, once.
            record.exc_text = _format_exception(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_tokens(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_tokens(record.stack_info)
        return True


_exception_formatter = logging.Formatter()


def _format_exception(exc_info: Any) -> str:
    return _exception_formatter.formatException(exc_info)


# --- what a line belongs to --------------------------------------------------------------

# (conn_id, user_id) of the WebSocket connection whose task is running.
_connection: ContextVar[tuple[str, Any] | None] = ContextVar("wedsync_connection", default=None)


def bind_connection(conn_id: str, user: Any) -> None:
    """Mark the running task as WebSocket connection ``conn_id`` of ``user`` (called at
    the start of ``RealtimeConsumer.__call__``): every record logged in it, and in the
    tasks it starts (its outbox writer), carries ``conn_id`` and ``user_id``."""
    _connection.set((conn_id, getattr(user, "pk", None)))
    if _sentry_loop_pending:
        _sentry_watch_loop()


def request_id() -> str | None:
    """The X-Request-ID of the HTTP request being handled here, if any."""
    return _request_id.get()


def _current_task() -> Any:
    # Only where Celery is loaded already: a log line never imports it.
    state = sys.modules.get("celery._state")
    return state.get_current_task() if state is not None else None


# The attributes LogContext may add, in the order PlainFormatter prints them.
CONTEXT_FIELDS = ("request_id", "conn_id", "user_id", "task_id", "task_name")


class LogContext(logging.Filter):
    """Puts the request id, the WebSocket connection and its user, and the Celery task on
    each record a handler writes (a value given with ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        found: dict[str, Any] = {}
        if (rid := _request_id.get()) is not None:
            found["request_id"] = rid
        if (connection := _connection.get()) is not None:
            found["conn_id"] = connection[0]
            if connection[1] is not None:
                found["user_id"] = connection[1]
        task = _current_task()
        if task is not None and (task_id := getattr(task.request, "id", None)):
            found["task_id"] = task_id
            found["task_name"] = task.name
        for key, value in found.items():
            record.__dict__.setdefault(key, value)
        return True


# --- formats -----------------------------------------------------------------------------


class PlainFormatter(logging.Formatter):
    """``time LEVEL logger: message [request_id=… conn_id=…]``: for people (development)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = [f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if k in record.__dict__]
        return f"{line} [{' '.join(context)}]" if context else line


# Not written: Django's request object (its repr carries the query string) and uvicorn's
# ANSI-coloured copy of the message.
_JSON_SKIPPED = (*RESERVED_ATTRS, "color_message", "request", "taskName")


class JsonFormatter(OrjsonFormatter):
    """One JSON object a line: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, ``process``, the context (``request_id``, ``conn_id``, ``user_id``,
    ``task_id``, ``task_name``), ``extra=`` fields, ``exc_info`` (the traceback); for
    uvicorn's access log also ``client``, ``method``, ``path`` and ``status``."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message", "process"],
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=_JSON_SKIPPED,
        )

    def format(self, record: logging.LogRecord) -> str:
        exc_info = record.exc_info
        if exc_info and record.exc_text:
            # RedactTokens left the traceback, redacted, in exc_text: print that one.
            record.exc_info = None
            try:
                return super().format(record)
            finally:
                record.exc_info = exc_info
        return super().format(record)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord,
                   message_dict: dict[str, Any]) -> None:  # fmt: skip
        log_data["time"] = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) == 5:
            # uvicorn's access line: '%s - "%s %s HTTP/%s" %d' (client, method, path, ...)
            log_data.update(client=args[0], method=args[1], path=args[2], status=args[4])


# --- the admins' error mail ---------------------------------------------------------------


class AdminEmailHandler(DjangoAdminEmailHandler):
    """Django's ``AdminEmailHandler`` (a 500's traceback and request, to ``ADMINS``) with
    its subject and text redacted like a log line, and the request's credential
    parameters (``?token=``) shown as ``[redacted]`` in the report. Builds nothing without
    ``ADMINS``. Django logs a 500 from a thread (``sync_to_async``), never on the event
    loop, so the SMTP round trip holds up no connection."""

    def __init__(self, include_html: bool = False, email_backend: str | None = None,
                 reporter_class: str | None = None) -> None:  # fmt: skip
        super().__init__(
            include_html, email_backend, reporter_class or "core.logging.RedactingExceptionReporter"
        )

    def emit(self, record: logging.LogRecord) -> None:
        from django.conf import settings

        if settings.ADMINS:
            super().emit(record)

    def send_mail(self, subject: str, message: str, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("html_message"):
            kwargs["html_message"] = redact_tokens(kwargs["html_message"])
        super().send_mail(redact_tokens(subject), redact_tokens(message), *args, **kwargs)


def _reporter_class() -> type:
    from django.views.debug import ExceptionReporter

    class RedactingExceptionReporter(ExceptionReporter):
        """Django's error report with the values of credential query parameters hidden
        (the report lists them as ``token = '...'``, which the line redaction misses)."""

        def get_traceback_data(self) -> dict[str, Any]:
            data = super().get_traceback_data()
            if "request_GET_items" in data:
                data["request_GET_items"] = [
                    (k, REDACTED if _SECRET_NAME.search(k) else v)
                    for k, v in self.request.GET.items()
                ]
            return data

    return RedactingExceptionReporter


def __getattr__(name: str) -> Any:
    # Made on first use (the handler names it): Django's debug views load the template
    # machinery, which the server's supervisor never needs.
    if name == "RedactingExceptionReporter":
        cls = _reporter_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# --- Sentry --------------------------------------------------------------------------------

_sentry_loop_pending = False


def sentry_init(*, dsn: str, environment: str, release: str | None, traces_sample_rate: float
                ) -> None:  # fmt: skip
    """Report errors to Sentry (settings, when ``SENTRY_DSN`` is set): Django's and
    Celery's integrations, logging's (ERROR records become events), and asyncio's once a
    process's event loop runs (the server's first WebSocket: ``bind_connection``).

    Nothing sent carries a credential: ``scrub_event`` redacts every event (and
    transaction), no request body or local variable is sent, and Sentry's own scrubber
    drops cookies and authorization headers (``send_default_pii`` off)."""
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration

    global _sentry_loop_pending
    sentry_sdk.init(
        dsn=dsn,
        environment=environment,
        release=release,
        traces_sample_rate=traces_sample_rate or None,  # None: no tracing at all
        integrations=[DjangoIntegration(), CeleryIntegration()],
        send_default_pii=False,
        # A request body may hold a password or a token; a frame's locals may hold
        # anything (a raw token in a variable): neither leaves the process.
        max_request_body_size="never",
        include_local_variables=False,
        before_send=scrub_event,
        before_send_transaction=scrub_event,
    )
    _sentry_loop_pending = True


def _sentry_watch_loop() -> None:
    """Sentry's asyncio integration patches the running event loop: settings load before
    the server's loop runs, so this happens with its first WebSocket connection."""
    global _sentry_loop_pending
    _sentry_loop_pending = False
    from sentry_sdk.integrations.asyncio import enable_asyncio_integration

    enable_asyncio_integration()


def _scrub(value: Any, key: str | None = None) -> Any:
    if key is not None and _SECRET_NAME.search(key) and isinstance(value, str | bytes):
        return REDACTED
    if isinstance(value, str):
        return redact_tokens(value)
    if isinstance(value, Mapping):
        return {k: _scrub(v, k if isinstance(k, str) else None) for k, v in value.items()}
    if isinstance(value, list | tuple):
        # [name, value] pairs (Sentry's headers and query lists) carry the name first.
        if len(value) == 2 and isinstance(value[0], str) and _SECRET_NAME.search(value[0]):
            return [value[0], REDACTED]
        return [_scrub(v) for v in value]
    return value


def _scrub_logentry(entry: dict[str, Any]) -> dict[str, Any]:
    """A logged message and its arguments: a credential may be an argument on its own
    (``"?token=%s"``), which only the formatted text shows; then the text is kept,
    redacted, and the arguments dropped (as ``RedactTokens`` does with a record)."""
    params = entry.get("params")
    formatted = entry.get("formatted") or entry.get("message") or ""
    if params and not entry.get("formatted"):
        try:
            formatted = formatted % tuple(params) if isinstance(params, list) else formatted
        except (TypeError, ValueError):
            pass
    redacted = redact_tokens(str(formatted))
    if redacted != formatted:
        return {**_scrub(entry), "message": redacted, "formatted": redacted, "params": []}
    return _scrub(entry)


def scrub_event(event: dict[str, Any], hint: Any = None) -> dict[str, Any]:
    """Sentry's ``before_send``: the event with every credential redacted, wherever it
    sits (the request's URL, query string, headers, the message and its arguments,
    exception values, breadcrumbs, extra data): ``token=``/``ticket=`` values and
    ``Bearer`` credentials in any text, and the value of any field named like a
    credential."""
    scrubbed = _scrub(event)
    if isinstance(event.get("logentry"), dict):
        scrubbed["logentry"] = _scrub_logentry(event["logentry"])
    return scrubbed
