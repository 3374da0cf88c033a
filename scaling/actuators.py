"""Actuators: what turns a scaling decision into capacity. One interface, chosen by
``settings.SCALING_ACTUATOR``:

* ``log`` (default): writes the desired capacity to the log and nothing else, for a
  laptop, or for a deployment where KEDA reads ``GET /api/scaling/desired`` itself.
* ``command``: runs ``settings.SCALING_COMMAND_TEMPLATE`` (for example
  ``kubectl scale deployment/wedsync-asgi --replicas={asgi}``) without a shell, within
  ``settings.SCALING_COMMAND_TIMEOUT`` seconds, capturing its output.

Each apply also carries the minimums in force (``{min_asgi}``, ``{min_workers}``): the
policy's, or a capacity reservation's while one is active (ADR 0033), for an autoscaler
whose own minimum should follow it (a KEDA ``ScaledObject``'s ``minReplicaCount``).

An actuator never raises for a failed apply: it returns an ``ActuatorResult`` that the
caller (``scaling.services.scaling_evaluate``) records on the decision and alerts on.
Contract-tested in ``tests/scaling/test_actuators.py``.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from dataclasses import dataclass
from typing import Protocol

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

# What is kept of a command's output on the decision row: enough for kubectl's error.
OUTPUT_MAX_CHARS = 4000
PLACEHOLDERS = ("asgi", "workers", "connection_limit", "min_asgi", "min_workers")


@dataclass(frozen=True)
class Desired:
    """The capacity to apply: ASGI processes, Celery workers, total connection limit, and
    the minimums in force (the policy's, or an active reservation's; 0: not given)."""

    asgi: int
    workers: int
    connection_limit: int
    min_asgi: int = 0
    min_workers: int = 0

    def values(self) -> dict[str, int]:
        """The template's placeholders and their values."""
        return dict(
            asgi=self.asgi,
            workers=self.workers,
            connection_limit=self.connection_limit,
            min_asgi=self.min_asgi,
            min_workers=self.min_workers,
        )


@dataclass(frozen=True)
class ActuatorResult:
    """What an apply did: ``ok``, its output in words, and a command's exit status."""

    ok: bool
    output: str
    returncode: int | None = None


class Actuator(Protocol):
    """Applies a desired capacity; ``name`` is recorded on each decision."""

    name: str

    def apply(self, desired: Desired) -> ActuatorResult: ...


class LogActuator:
    """Logs the desired capacity (INFO) and reports success: applies nothing."""

    name = "log"

    def apply(self, desired: Desired) -> ActuatorResult:
        """Log the desired capacity; called once per persisted change."""
        text = (
            f"desired capacity: asgi={desired.asgi} workers={desired.workers} "
            f"connection_limit={desired.connection_limit} min_asgi={desired.min_asgi} "
            f"min_workers={desired.min_workers}"
        )
        logger.info("scaling: %s", text)
        return ActuatorResult(ok=True, output=text)


class CommandActuator:
    """Runs a command template with ``{asgi}``, ``{workers}``, ``{connection_limit}``,
    ``{min_asgi}``, ``{min_workers}`` (a literal brace is doubled: ``{{``).

    The template is split with ``shlex`` first and each argument formatted after, so a
    value can never become a second argument or shell syntax; no shell runs at all.
    """

    name = "command"

    def __init__(self, template: str, timeout: float) -> None:
        self.template = template
        self.timeout = timeout

    def argv(self, desired: Desired) -> list[str]:
        """The command line for ``desired`` (``ValueError`` for a broken template)."""
        try:
            parts = shlex.split(self.template)
            return [part.format(**desired.values()) for part in parts]
        except (KeyError, IndexError) as exc:
            raise ValueError(f"unknown placeholder {exc} (use {PLACEHOLDERS})") from None

    def apply(self, desired: Desired) -> ActuatorResult:
        """Run the command; a non-zero exit, a timeout or a missing program is a failure."""
        try:
            argv = self.argv(desired)
        except ValueError as exc:
            return ActuatorResult(ok=False, output=f"bad SCALING_COMMAND_TEMPLATE: {exc}")
        if not argv:
            return ActuatorResult(ok=False, output="SCALING_COMMAND_TEMPLATE is empty")
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            partial = _text(exc.stdout) + _text(exc.stderr)
            return ActuatorResult(
                ok=False, output=_clip(f"timed out after {self.timeout:g} s\n{partial}")
            )
        except OSError as exc:  # not found, not executable
            return ActuatorResult(ok=False, output=f"could not run {argv[0]!r}: {exc}")
        output = _clip((done.stdout or "") + (done.stderr or ""))
        return ActuatorResult(ok=done.returncode == 0, output=output, returncode=done.returncode)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _clip(text: str) -> str:
    text = text.strip()
    if len(text) <= OUTPUT_MAX_CHARS:
        return text
    return text[: OUTPUT_MAX_CHARS - 20] + "\n… (output cut)"


def get_actuator(name: str | None = None) -> Actuator:
    """The actuator ``settings.SCALING_ACTUATOR`` names (or ``name``)."""
    name = name or settings.SCALING_ACTUATOR
    if name == "log":
        return LogActuator()
    if name == "command":
        template = settings.SCALING_COMMAND_TEMPLATE
        if not template.strip():
            raise ImproperlyConfigured("SCALING_ACTUATOR=command needs SCALING_COMMAND_TEMPLATE")
        return CommandActuator(template, float(settings.SCALING_COMMAND_TIMEOUT))
    raise ImproperlyConfigured(f"SCALING_ACTUATOR must be 'log' or 'command', not {name!r}")
