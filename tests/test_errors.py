"""The flows' exceptions live in one module, each mapped to the exit code it ends a command with."""

from __future__ import annotations

import pytest

from connectors.errors import LangfuseAuthError, LangfuseServerError
from flows.errors import (
    BadInputError,
    ConfigError,
    RotationInProgressError,
    StepFailed,
    Superseded,
    exit_code_of,
)
from flows.models import ExitCode
from flows.rotation.lock import LockDirError
from flows.rotation.steps import connector_failure


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConfigError("bad field"), ExitCode.BAD_INPUT),
        (LockDirError("lock dir not private"), ExitCode.BAD_INPUT),
        (BadInputError("not a key of this project"), ExitCode.BAD_INPUT),
        (RotationInProgressError("held"), ExitCode.IN_PROGRESS),
        (Superseded("emergency-run"), ExitCode.IN_PROGRESS),
        (StepFailed("verify", "wrong project"), ExitCode.FAILED),
        (ValueError("anything else"), ExitCode.FAILED),
    ],
)
def test_each_error_maps_to_its_exit_code(error: BaseException, code: ExitCode) -> None:
    assert exit_code_of(error) is code


def test_a_step_failure_keeps_whether_its_connector_failure_was_transient() -> None:
    assert connector_failure("create", LangfuseServerError("500 after retries")).retryable
    assert not connector_failure("verify", LangfuseAuthError("401")).retryable


def test_a_step_failure_is_one_line() -> None:
    assert str(StepFailed("store", "line one\n  line two")) == "line one line two"
