"""The rotator's flows, one package per concern (README "Development" maps it too).

A package imports only from those above it in this list (``tests/test_architecture.py`` checks
it), and re-exports its public names, imported on first use:

- ``flows`` itself: shared leaves (``errors``, ``models``, ``redact``, ``audit``, ``clock``,
  ``state``, ``shown``) and the Prefect flows deployments name (``rotate``, ``emergency``,
  ``reconcile``, ``report_flow``; their paths are the entrypoints in ``deployments/prefect.yaml``).
- ``flows.config``: the configuration model, its field types, locations, transport checks,
  ``project_template`` expansion, the organization key and the store registry.
- ``flows.rotation``: a rotation without Prefect: steps, checklists, plan, context, runners, lock,
  handover, crash points, dry run, notifications and the run's event, and ``entry_run`` which runs one entry.
- ``flows.prefect``: Prefect's side of a run: REST client, flow-run records, hooks, trust boundary,
  initiator, the report's events. (``import prefect`` elsewhere still means the Prefect library: imports are
  absolute.)
- ``flows.fleet``, ``flows.compliance``, ``flows.trigger``: ``rotate --all``; ``status`` and
  ``report``; what starts an emergency from outside (automation, compromise forwarder).
- ``flows.cli``: the ``langfuse-rotate`` command line (``flows.cli.main``).

This file imports nothing, so importing one package never loads the others.
"""
