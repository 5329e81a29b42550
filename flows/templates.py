"""Entries generated from the organization's project list (``project_template``, README "Entry templates").

A new Langfuse project matching the template is rotated by the next fleet run without editing
the configuration. Explicit ``projects`` entries win: a project one of them already covers (by
project id) or whose generated name is taken gets no generated entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from pydantic import ValidationError

from connectors.langfuse import LangfuseAdminClient
from connectors.langfuse.models import OrganizationProject
from flows.config import ProjectEntry, ProjectTemplate, RotationConfig
from flows.context import org_key
from flows.stores import build_store


@dataclass(frozen=True)
class Generated:
    """One project the template matched: the entry made from it, or why none could be."""

    project_name: str
    project_id: str
    entry: str | None
    problem: str | None = None


def _fill(text: str, project: OrganizationProject) -> str:
    return text.replace("{project_name}", project.name).replace("{project_id}", project.id)


def matches(template: ProjectTemplate, name: str) -> bool:
    return any(fnmatchcase(name, p) for p in template.include) and not any(
        fnmatchcase(name, p) for p in template.exclude
    )


def entry_for(template: ProjectTemplate, project: OrganizationProject) -> ProjectEntry:
    """The entry the template makes for ``project``; raises ``ValueError`` naming what is invalid."""
    consumers = [
        c.model_copy(
            update={
                "name": _fill(c.name, project),
                "health_url": _fill(c.health_url, project),
                "restart_url": _fill(c.restart_url, project) if c.restart_url else None,
            }
        )
        for c in template.consumers
    ]
    try:
        return ProjectEntry(
            name=_fill(template.name, project),
            project_id=project.id,
            store=template.store,
            path=_fill(template.path, project),
            fields=template.fields,
            consumers=consumers,
            wait_timeout_s=template.wait_timeout_s,
            grace_period_s=template.grace_period_s,
            canary_timeout_s=template.canary_timeout_s,
            revoke_recheck_s=template.revoke_recheck_s,
        )
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(p) for p in error["loc"])
        raise ValueError(f"{field}: {error['msg']}") from None


def expand(config: RotationConfig, projects: list[OrganizationProject]) -> tuple[RotationConfig, list[Generated]]:
    """The configuration with the template's entries appended, and what the template matched."""
    template = config.project_template
    if template is None:
        return config, []
    taken_names = {e.name for e in config.projects}
    covered_ids = {e.project_id for e in config.projects}
    added: list[ProjectEntry] = []
    report: list[Generated] = []
    for project in sorted(projects, key=lambda p: p.name):
        if not matches(template, project.name):
            continue
        if project.id in covered_ids:
            report.append(Generated(project.name, project.id, None, "covered by an explicit entry"))
            continue
        try:
            entry = entry_for(template, project)
        except ValueError as exc:
            report.append(Generated(project.name, project.id, None, f"invalid entry: {exc}"))
            continue
        if entry.name in taken_names:
            report.append(Generated(project.name, project.id, None, f"entry name '{entry.name}' is taken"))
            continue
        taken_names.add(entry.name)
        added.append(entry)
        report.append(Generated(project.name, project.id, entry.name))
    return config.model_copy(update={"projects": [*config.projects, *added]}), report


def organization_projects(config: RotationConfig) -> list[OrganizationProject]:
    """``GET /api/public/organizations/projects`` with the configured organization key."""
    stores = (
        {config.langfuse.org_key.store: build_store(config.stores[config.langfuse.org_key.store])}
        if (config.langfuse.org_key is not None)
        else {}
    )
    public_key, secret_key = org_key(config, stores)
    with LangfuseAdminClient(
        config.langfuse.host, public_key, secret_key, timeout_s=config.langfuse.timeout_s
    ) as admin:
        return admin.list_projects()
