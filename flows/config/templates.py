"""Entries generated from the organization's project list (``project_template``, docs/fleet.md "Entry templates").

A new Langfuse project matching the template is rotated by the next fleet run without editing
the configuration. Explicit ``projects`` entries win: a project one of them already covers (by
project id) or whose generated name is taken gets no generated entry.

Whoever may create a Langfuse project chooses its name, so a name is never trusted to say where
a key goes (README "Safety guarantees"): a name or id the template puts into the store path must
be one path segment the path rules accept, and the generated entry's secret must be nobody
else's (a configured entry's, its staging place, the organization key's, another generated
entry's). Otherwise the project is *refused*: no entry, never written, a warning naming both,
``skipped`` in a fleet run and a finding in the report.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from pydantic import ValidationError

from connectors.langfuse import LangfuseAdminClient
from connectors.langfuse.models import OrganizationProject
from flows.config.locations import collision_text
from flows.config.model import ProjectEntry, ProjectTemplate, RotationConfig, TracesConfig
from flows.config.org import org_key
from flows.config.stores import build_store
from flows.config.types import path_value_problem
from flows.shown import ENTRY_NAME_PATTERN

logger = logging.getLogger("langfuse_rotate.templates")

RefusalRule = Literal["location-collision", "unsafe-project-name"]


@dataclass(frozen=True)
class Refusal:
    """Why the template refused a project for safety (its ``rule`` is the report's)."""

    rule: RefusalRule
    entry: str
    """The entry name the project would have had (its project name when none could be made)."""
    store: str
    other_entry: str | None = None
    """The configured entry whose place it would take (None: the organization key, or no collision)."""


@dataclass(frozen=True)
class Generated:
    """One project the template matched: the entry made from it, or why none could be."""

    project_name: str
    project_id: str
    entry: str | None
    problem: str | None = None
    refused: Refusal | None = None
    """Set when the project was refused for safety (``problem`` says why); never written."""


def _fill(text: str, project: OrganizationProject) -> str:
    return text.replace("{project_name}", project.name).replace("{project_id}", project.id)


def _fill_traces(traces: TracesConfig | None, project: OrganizationProject) -> TracesConfig | None:
    """``{project_name}``/``{project_id}`` in the values of ``traces.match`` (docs/trace-evidence.md)."""
    if traces is None:
        return None
    m = traces.match

    def fill(value: str | None) -> str | None:
        return _fill(value, project) if value is not None else None

    match = m.model_copy(
        update={
            "name": fill(m.name),
            "environment": fill(m.environment),
            "tags": [_fill(tag, project) for tag in m.tags],
            "release": fill(m.release),
            "version": fill(m.version),
            "metadata": {key: _fill(value, project) for key, value in m.metadata.items()},
        }
    )
    return traces.model_copy(update={"match": match})


def _matches(template: ProjectTemplate, name: str) -> bool:
    return any(fnmatchcase(name, p) for p in template.include) and not any(
        fnmatchcase(name, p) for p in template.exclude
    )


def entry_for(template: ProjectTemplate, project: OrganizationProject) -> ProjectEntry:
    """The entry the template makes for ``project``; raises ``ValueError`` naming what is invalid."""
    consumers = [
        c.model_copy(
            update={
                "name": _fill(c.name, project),
                "health_url": _fill(c.health_url, project) if c.health_url else None,
                "restart_url": _fill(c.restart_url, project) if c.restart_url else None,
                "traces": _fill_traces(c.traces, project),
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


def expand(
    config: RotationConfig, projects: list[OrganizationProject], *, warn: bool = True
) -> tuple[RotationConfig, list[Generated]]:
    """The configuration with the template's entries appended, and what the template matched.
    ``warn``: log each refused project as a warning (docs/fleet.md "Entry templates"); the report lists
    them as findings instead."""
    template = config.project_template
    if template is None:
        return config, []
    taken_names = {e.name for e in config.projects}
    covered_ids = {e.project_id for e in config.projects}
    claims = config.location_claims()
    candidates: list[tuple[OrganizationProject, ProjectEntry]] = []
    report: dict[str, Generated] = {}
    for project in sorted(projects, key=lambda p: p.name):
        if not _matches(template, project.name):
            continue
        if project.id in covered_ids:
            report[project.id] = Generated(project.name, project.id, None, "covered by an explicit entry")
            continue
        unsafe = _unsafe_value(template, project)
        if unsafe is not None:
            report[project.id] = _refused(
                project, "unsafe-project-name", _entry_name(template, project), template, unsafe
            )
            continue
        try:
            entry = entry_for(template, project)
        except ValueError as exc:
            report[project.id] = Generated(project.name, project.id, None, f"invalid entry: {exc}")
            continue
        if entry.name in taken_names:
            report[project.id] = Generated(project.name, project.id, None, f"entry name '{entry.name}' is taken")
            continue
        holder = claims.holder(entry.store, entry.path)
        if holder is not None:
            why = f"entry '{entry.name}' at '{entry.path}' of store '{entry.store}' {collision_text(holder)}"
            report[project.id] = _refused(project, "location-collision", entry.name, template, why, holder.entry)
            continue
        taken_names.add(entry.name)
        candidates.append((project, entry))
    added = _without_shared_paths(candidates, template, report)
    for g in report.values():
        if warn and g.refused is not None:
            logger.warning("project_template: %s", g.problem)
    order = {p.id: i for i, p in enumerate(sorted(projects, key=lambda p: p.name))}
    listed = sorted(report.values(), key=lambda g: order[g.project_id])
    return config.model_copy(update={"projects": [*config.projects, *added]}), listed


def _without_shared_paths(
    candidates: list[tuple[OrganizationProject, ProjectEntry]], template: ProjectTemplate, report: dict[str, Generated]
) -> list[ProjectEntry]:
    """The generated entries that share their path with no other generated one; those that do are
    all refused (whichever came first would take a secret that is not clearly its own)."""
    by_path: dict[str, list[ProjectEntry]] = defaultdict(list)
    for _, entry in candidates:
        by_path[entry.path].append(entry)
    added: list[ProjectEntry] = []
    for project, entry in candidates:
        sharing = [e.name for e in by_path[entry.path] if e.name != entry.name]
        if sharing:
            others = ", ".join(f"'{name}'" for name in sharing)
            why = (
                f"entry '{entry.name}' at '{entry.path}' of store '{entry.store}' would be stored in the same "
                f"secret as generated {others}: project_template.path must give each project its own path"
            )
            report[project.id] = _refused(project, "location-collision", entry.name, template, why)
            continue
        added.append(entry)
        report[project.id] = Generated(project.name, project.id, entry.name)
    return added


def _refused(
    project: OrganizationProject,
    rule: RefusalRule,
    entry: str,
    template: ProjectTemplate,
    why: str,
    other_entry: str | None = None,
) -> Generated:
    problem = f"project '{project.name}' ({project.id}) refused, never written: {why}"
    return Generated(project.name, project.id, None, problem, Refusal(rule, entry, template.store, other_entry))


_URL_VALUE = re.compile(r"^[A-Za-z0-9_-]+$")
"""What a project's name or id may be where the template puts it into a consumer URL: one label,
so it can neither name another host (``.``, ``@``, ``:``) nor leave the host part (``/``, ``?``,
``#``, ``%``, whitespace). A restart or health request carries the consumer's secret ``headers``."""


def _unsafe_value(template: ProjectTemplate, project: OrganizationProject) -> str | None:
    """Why a value the template puts into the store path would not be one safe path segment, or
    into a consumer URL would not be one label (docs/fleet.md "Entry templates")."""
    for placeholder, value in (("{project_name}", project.name), ("{project_id}", project.id)):
        if placeholder in template.path:
            problem = path_value_problem(value, what=f"value of {placeholder} in project_template.path")
            if problem is not None:
                return f"{problem}; rename the project or exclude it"
        in_urls = any(placeholder in (c.health_url or "") + (c.restart_url or "") for c in template.consumers)
        if in_urls and not _URL_VALUE.match(value):
            return (
                f"the value of {placeholder} in project_template.consumers URLs must be letters, digits, '-' "
                f"or '_' only (it could name another host for the consumer's requests and headers): {value!r}; "
                "rename the project or exclude it"
            )
    return None


def _entry_name(template: ProjectTemplate, project: OrganizationProject) -> str:
    name = _fill(template.name, project)
    return name if re.match(ENTRY_NAME_PATTERN, name) else project.name


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
