"""What the rotator enforces itself at the Prefect trust boundary (README "Trust boundary").

Whoever can call the Prefect API can create a flow run of a deployment with *job variables*,
which a process worker applies on top of the work pool's base job template: another ``command``,
extra ``env`` (``LANGFUSE_ROTATE_CONFIG``, ``PYTHONPATH``, a store address), another
``working_dir``. The worker's environment holds the store credentials and the organization key,
so such a run could send them anywhere. Only the work pool's base job template can stop a run
whose command is replaced outright (our code never runs); a run that still reaches our flows is
refused here before it reads the configuration or any secret.

Allowed job variables: the harmless ones listed in ``ALLOWED_JOB_VARIABLES``; anything else set on
the flow run or the deployment refuses the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ALLOWED_JOB_VARIABLES", "JobVariablesRefusedError", "overridden_job_variables", "refuse_job_overrides"]

ALLOWED_JOB_VARIABLES = frozenset({"name", "labels", "stream_output"})
"""Job variables that change neither what runs nor its environment."""


class JobVariablesRefusedError(Exception):
    """The flow run (or its deployment) overrides the work pool's job template."""


def overridden_job_variables(*layers: Mapping[str, Any] | None) -> list[str]:
    """The job variables set in any layer that are not in ``ALLOWED_JOB_VARIABLES`` (sorted)."""
    found: set[str] = set()
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in ALLOWED_JOB_VARIABLES and value not in (None, {}, [], ""):
                found.add(str(key))
    return sorted(found)


def refuse_job_overrides() -> None:
    """Raise ``JobVariablesRefusedError`` when the running flow run's job variables, or its
    deployment's, override anything but the harmless ones. A no-op outside a deployment run."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None or flow_run.deployment_id is None:
        return  # run from Python or the command line: no worker, no job template
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run.id)  # the server's copy, not the engine's cached one
        deployment = client.read_deployment(flow_run.deployment_id)
    overridden = overridden_job_variables(deployment.job_variables, run.job_variables)
    if overridden:
        raise JobVariablesRefusedError(
            f"refused: this run overrides the work pool's job template ({', '.join(overridden)}); "
            "a run may not change the worker's command, environment or working directory "
            "(see the README's trust boundary section); nothing was changed"
        )
