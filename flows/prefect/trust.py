"""What the rotator enforces itself at the Prefect trust boundary (docs/trust-boundary.md).

Whoever can call the Prefect API can create a flow run of a deployment with *job variables*,
which a process worker applies on top of the work pool's base job template: another ``command``,
extra ``env`` (``LANGFUSE_ROTATE_CONFIG``, ``PYTHONPATH``, a store address), another
``working_dir``. The worker's environment holds the store credentials and the organization key,
so such a run could send them anywhere. Only the work pool's base job template can stop a run
whose command is replaced outright (our code never runs); a run that still reaches our flows is
refused here before it reads the configuration or any secret.

Allowed job variables: the harmless ones listed in ``ALLOWED_JOB_VARIABLES``; anything else set on
the flow run or the deployment refuses the run.

The same caller can set the ``config_path`` parameter to any YAML file the worker can read: a
store or Langfuse address of its choosing, whose token the worker fills in from its own
environment. A deployment run may therefore name only the files the worker allows
(``LANGFUSE_ROTATE_ALLOW_CONFIG_PATH``); anything else refuses the run before any file is read.
Runs from the command line (no deployment) keep ``--config``.

A refused run writes one final audit line (outcome ``refused``) where the worker's own
configuration says, and its flow fails, so the failure hook notifies the worker's own targets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

__all__ = [
    "ALLOWED_JOB_VARIABLES",
    "ALLOW_CONFIG_PATH_ENV_VAR",
    "ConfigPathRefusedError",
    "JobVariablesRefusedError",
    "RunRefusedError",
    "allowed_config_path",
    "config_path_for_hook",
    "overridden_job_variables",
    "trusted_config_path",
]

ALLOW_CONFIG_PATH_ENV_VAR = "LANGFUSE_ROTATE_ALLOW_CONFIG_PATH"
"""The configuration files a deployment run's ``config_path`` may name on this worker: absolute
paths separated by ``os.pathsep`` (``:``), or ``1``/``any`` for any file. Unset: none (the worker's
own ``LANGFUSE_ROTATE_CONFIG`` only)."""
_ANY = {"1", "any"}

ALLOWED_JOB_VARIABLES = frozenset({"name", "labels", "stream_output"})
"""Job variables that change neither what runs nor its environment."""


class RunRefusedError(Exception):
    """A deployment run refused at the trust boundary before it read any configuration."""


class JobVariablesRefusedError(RunRefusedError):
    """The flow run (or its deployment) overrides the work pool's job template."""

    def __init__(self, overridden: list[str], message: str) -> None:
        super().__init__(message)
        self.overridden = overridden


class ConfigPathRefusedError(RunRefusedError):
    """The deployment run names a configuration file the worker does not allow."""


def overridden_job_variables(*layers: Mapping[str, Any] | None) -> list[str]:
    """The job variables set in any layer that are not in ``ALLOWED_JOB_VARIABLES`` (sorted)."""
    found: set[str] = set()
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in ALLOWED_JOB_VARIABLES and value not in (None, {}, [], ""):
                found.add(str(key))
    return sorted(found)


def allowed_config_path(config_path: str | None, environ: Mapping[str, str]) -> tuple[bool, str | None]:
    """Whether a deployment run may read ``config_path`` on a worker with ``environ``, and the path
    to read: None (the worker's own ``LANGFUSE_ROTATE_CONFIG``) when none is named.

    Paths are compared as written after lexical normalisation (``os.path.normpath``: no file is
    looked at), and the normalised path is the one read, so ``allowed/link/../x.yaml`` can never
    lead through a symbolic link to another file. The worker's own ``LANGFUSE_ROTATE_CONFIG`` is
    always allowed; relative entries of the allow list allow nothing."""
    from flows.config.model import CONFIG_ENV_VAR

    if not config_path:
        return True, None
    setting = environ.get(ALLOW_CONFIG_PATH_ENV_VAR, "").strip()
    if setting.lower() in _ANY:
        return True, config_path
    wanted = os.path.normpath(config_path)
    listed = [*setting.split(os.pathsep), environ.get(CONFIG_ENV_VAR, "")]
    allowed = {os.path.normpath(p.strip()) for p in listed if p.strip() and os.path.isabs(p.strip())}
    return (True, wanted) if os.path.isabs(wanted) and wanted in allowed else (False, None)


def config_path_for_hook(config_path: str | None, *, deployment_run: bool) -> str | None:
    """The configuration file a failure hook may read for a run's ``config_path`` parameter: the
    parameter outside deployment runs and where the worker allows it, else None (the worker's own)."""
    if not deployment_run:
        return config_path
    allowed, path = allowed_config_path(config_path, os.environ)
    return path if allowed else None


def trusted_config_path(command: str, project: str | None, config_path: str | None) -> str | None:
    """The configuration file this flow run may read (None: the worker's ``LANGFUSE_ROTATE_CONFIG``).

    A deployment run that overrides the job template or names a file the worker does not allow is
    refused: one final audit line (outcome ``refused``) at the worker's own audit path, then
    ``RunRefusedError`` fails the flow (its failure hook notifies). Outside a deployment run (from
    Python or the command line) ``config_path`` is returned as it is."""
    flow_run = _deployment_flow_run()
    if flow_run is None:
        return config_path  # run from Python or the command line: no worker, no job template
    try:
        _refuse_job_overrides(flow_run)
        allowed, path = allowed_config_path(config_path, os.environ)
        if not allowed:
            raise ConfigPathRefusedError(
                f"refused: this deployment run names a configuration file (config_path) this worker does "
                f"not allow: {json.dumps(str(config_path)[:200])}; allow it with {ALLOW_CONFIG_PATH_ENV_VAR} "
                "on the worker, or leave config_path unset (the worker's LANGFUSE_ROTATE_CONFIG applies); "
                "nothing was read or changed"
            )
    except RunRefusedError as refused:
        _audit_refusal(command, project, refused)
        raise
    return path


def _audit_refusal(command: str, project: str | None, refused: RunRefusedError) -> None:
    """The refused run's final line, at the audit path of the worker's own configuration; at the
    default path when the run set the environment (its ``LANGFUSE_ROTATE_CONFIG`` may be the
    caller's: no file it names is read)."""
    from prefect.runtime import flow_run as runtime_flow_run

    from flows.audit import audit_failure, default_audit_path, run_context
    from flows.prefect.initiator import prefect_initiator

    environment_set = isinstance(refused, JobVariablesRefusedError) and "env" in refused.overridden
    initiator = prefect_initiator()
    user = str(initiator["user"]) if initiator else None
    with run_context(command, run_id=str(runtime_flow_run.id), initiator=initiator, user=user):
        audit_failure(
            command, project, refused, path=default_audit_path() if environment_set else None, outcome="refused"
        )


def _deployment_flow_run() -> Any:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None or flow_run.deployment_id is None:
        return None
    return flow_run


def _refuse_job_overrides(flow_run: Any) -> None:
    """Raise ``JobVariablesRefusedError`` when the flow run's job variables, or its deployment's,
    override anything but the harmless ones."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)  # the server's copy, not the engine's cached one
        deployment = client.read_deployment(flow_run.deployment_id)
    overridden = overridden_job_variables(deployment.job_variables, run.job_variables)
    if overridden:
        raise JobVariablesRefusedError(
            overridden,
            f"refused: this run overrides the work pool's job template ({', '.join(overridden)}); "
            "a run may not change the worker's command, environment or working directory "
            "(see docs/trust-boundary.md); nothing was changed",
        )
