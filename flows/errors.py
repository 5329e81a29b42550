"""The flows' exceptions, in one place, each with the exit code it ends a command with (README
"Exit codes"). Connector failures are ``connectors.errors.ConnectorError``; a step turns one into
a ``StepFailed`` that keeps whether it is worth a retry.

Every message is one secret-free line.
"""

from __future__ import annotations

from typing import Any, ClassVar

from flows.models import ExitCode
from flows.redact import scrub


class RotateError(Exception):
    """Base of the flows' own errors."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class ConfigError(RotateError):
    """Invalid configuration: one line naming the file, line and field. Nothing was changed."""

    exit_code = ExitCode.BAD_INPUT


class BadInputError(RotateError):
    """The request cannot be carried out as given; nothing was changed."""

    exit_code = ExitCode.BAD_INPUT


class LockDirError(ConfigError):
    """The lock directory or a file in it is not private to this user (``flows.rotation.lock``)."""


class ForwarderSetupError(BadInputError):
    """The compromise forwarder cannot start (bad option, unreadable file): one line, exit 2."""


class RotationInProgressError(RotateError):
    """Another rotation of the same key holds the lock, or replaced the key while this one waited."""

    exit_code = ExitCode.IN_PROGRESS


class StepFailed(RotateError):
    """A step could not do its job. The message is one secret-free line; ``facts`` are public.

    ``retryable``: the failure is transient (a connector said so: unreachable, 5xx, throttled), so
    the step's contract may retry it; a failure that states a fact (wrong project, another rotation
    staged) would fail the same way again."""

    exit_code = ExitCode.FAILED

    def __init__(self, step: str, message: str, *, retryable: bool = False, **facts: Any) -> None:
        self.step = step
        self.retryable = retryable
        self.facts = facts
        super().__init__(scrub(" ".join(message.split())))


class RunRefusedError(Exception):
    """A deployment run refused at the trust boundary (``flows.prefect.trust``) before it read any
    configuration: the flow run fails (exit 1 where a command waits for it)."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class JobVariablesRefusedError(RunRefusedError):
    """The flow run (or its deployment) overrides the work pool's job template."""

    def __init__(self, overridden: list[str], message: str) -> None:
        super().__init__(message)
        self.overridden = overridden


class ConfigPathRefusedError(RunRefusedError):
    """The deployment run names a configuration file the worker does not allow."""


class CheckFailed(Exception):
    """A dry run's check found the entry not ready (``flows.rotation.dryrun``): reported in the
    plan, never raised out of it."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class AuditFileError(Exception):
    """The audit file or its directory is not the rotator's own, or the line could not be written
    (README "Audit log"): the run's result says so, exit 4 when the run was otherwise done."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED


class LocationCollision(ValueError):
    """Entry number ``index`` (``entry``) would share its secret with another holder (``reason``
    says which): ``flows.config.model`` turns it into a ``ConfigError`` naming the line."""

    def __init__(self, index: int, entry: str, reason: str) -> None:
        super().__init__(f"entry '{entry}' {reason}")
        self.index = index
        self.entry = entry


class EventRefused(Exception):
    """The event does not allow a containment (``flows.trigger.checks``); nothing was changed.
    ``page``: the refusal is an infrastructure failure (the event could not be checked), which
    pages like an emergency. Caught where it is raised: the event's run completes, named
    ``Refused``, and an entry busy with another emergency ends ``in_progress`` (exit 3)."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED

    def __init__(self, reason: str, *, page: bool = False, duplicate: bool = False) -> None:
        self.page = page
        self.duplicate = duplicate
        super().__init__(reason)


class ReportRefused(Exception):
    """A report the compromise forwarder will not forward: an HTTP status and a one-line reason
    (never echoing the input), answered to the scanner; it never ends the forwarder."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class StepTimeout(BaseException):
    """Raised inside a step run in-process when its deadline passes. A BaseException so that no
    ``except Exception`` inside the step swallows it; the runner turns it into a ``StepFailed``."""


class Superseded(BaseException):
    """An emergency asked for this entry: stop now, roll nothing back, let go of the lock.

    A BaseException so no ``except Exception`` on the way (a step's own error handling, a consumer
    wait that reports instead of raising) turns it into an ordinary failure that would roll back."""

    exit_code: ClassVar[ExitCode] = ExitCode.IN_PROGRESS

    def __init__(self, emergency_run: str) -> None:
        self.emergency_run = emergency_run
        super().__init__(f"superseded by emergency {emergency_run}")


def exit_code_of(exc: BaseException) -> ExitCode:
    """The exit code a command ends with when ``exc`` escapes it."""
    code = getattr(type(exc), "exit_code", ExitCode.FAILED)
    return code if isinstance(code, ExitCode) else ExitCode.FAILED
