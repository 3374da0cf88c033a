"""The actuator contract, run against every actuator (``log`` and ``command``), and the
command actuator's failures: a non-zero exit, a timeout, a missing program."""

from __future__ import annotations

import shlex
import sys

import pytest
from django.core.exceptions import ImproperlyConfigured

from scaling.actuators import (
    Actuator,
    CommandActuator,
    Desired,
    LogActuator,
    get_actuator,
)

pytestmark = pytest.mark.timeout(20)

PYTHON = shlex.quote(sys.executable)
# A real, harmless command that prints what it was given, one argument per placeholder.
ECHO = f"{PYTHON} -c 'import sys; print(*sys.argv[1:])' {{asgi}} {{workers}} {{connection_limit}}"
DESIRED = Desired(asgi=4, workers=3, connection_limit=6000)


class ActuatorContract:
    """What every actuator promises: a name, and a successful apply that says what it
    applied. Subclasses give ``make()``."""

    def make(self) -> Actuator:
        raise NotImplementedError

    def test_apply__succeeds_and_reports_the_desired_capacity(self):
        # when
        result = self.make().apply(DESIRED)

        # then
        assert result.ok is True
        assert "4" in result.output and "3" in result.output and "6000" in result.output

    def test_apply__same_result_when_applied_twice(self):
        actuator = self.make()
        assert actuator.apply(DESIRED) == actuator.apply(DESIRED)

    def test_name__is_what_settings_choose_it_by(self, settings):
        actuator = self.make()
        settings.SCALING_ACTUATOR = actuator.name
        settings.SCALING_COMMAND_TEMPLATE = ECHO
        assert type(get_actuator()) is type(actuator)


class TestLogActuator(ActuatorContract):
    def make(self) -> Actuator:
        return LogActuator()

    def test_apply__logs_the_desired_capacity(self, caplog):
        caplog.set_level("INFO", logger="scaling.actuators")
        self.make().apply(DESIRED)
        assert "asgi=4 workers=3 connection_limit=6000" in caplog.text


class TestCommandActuator(ActuatorContract):
    def make(self) -> Actuator:
        return CommandActuator(ECHO, timeout=10)

    def test_apply__fills_each_placeholder_into_its_own_argument(self):
        result = self.make().apply(DESIRED)
        assert result.output == "4 3 6000"
        assert result.returncode == 0

    def test_apply__values_never_become_shell_syntax(self):
        # given: a template with shell syntax, which no shell ever sees
        actuator = CommandActuator(f"{PYTHON} -c 'import sys; print(sys.argv[1:])' {{asgi}};ls", 10)

        # when
        result = actuator.apply(DESIRED)

        # then
        assert result.ok is True
        assert result.output == "['4;ls']"

    def test_apply__a_failing_command_is_a_recorded_failure(self):
        # given
        actuator = CommandActuator(
            f'{PYTHON} -c \'import sys; print("no such deployment", file=sys.stderr); '
            f"sys.exit(3)'",
            timeout=10,
        )

        # when
        result = actuator.apply(DESIRED)

        # then
        assert result.ok is False
        assert result.returncode == 3
        assert "no such deployment" in result.output

    def test_apply__a_command_over_its_timeout_is_stopped_and_a_failure(self):
        actuator = CommandActuator(
            f"{PYTHON} -c 'import time; print(\"started\", flush=True); time.sleep(30)'",
            timeout=1,
        )
        result = actuator.apply(DESIRED)
        assert result.ok is False
        assert result.returncode is None
        assert result.output.startswith("timed out after 1 s")

    def test_apply__a_missing_program_is_a_failure(self):
        result = CommandActuator("/nonexistent/kubectl scale --replicas={asgi}", 5).apply(DESIRED)
        assert result.ok is False
        assert "could not run '/nonexistent/kubectl'" in result.output

    def test_apply__an_unknown_placeholder_is_a_failure(self):
        result = CommandActuator("echo {replicas}", 5).apply(DESIRED)
        assert result.ok is False
        assert "unknown placeholder 'replicas'" in result.output


def test_get_actuator__refuses_an_unknown_name(settings):
    settings.SCALING_ACTUATOR = "helm"
    with pytest.raises(ImproperlyConfigured, match="'log' or 'command'"):
        get_actuator()


def test_get_actuator__command_needs_a_template(settings):
    settings.SCALING_ACTUATOR = "command"
    settings.SCALING_COMMAND_TEMPLATE = "  "
    with pytest.raises(ImproperlyConfigured, match="SCALING_COMMAND_TEMPLATE"):
        get_actuator()
