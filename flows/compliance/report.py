"""``langfuse-rotate report``: the access-control checklist as findings.

Rules (README, compliance report): ``key-overdue``, ``key-due-soon``, ``stray-key``,
``shared-key``, ``wrong-scope``, ``rotation-stuck``, ``consumer-drift``, ``access``,
``location-collision``, ``unsafe-project-name``, ``plaintext-transport``. Each finding
names its rule, a severity, the entry (or the Langfuse project) and the public key involved;
never a secret. ``collect_report`` reads (in parallel, read-only), ``evaluate`` is the rules
over what was read, so the rules are plain functions of facts.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from connectors.errors import ConnectorError, LangfuseForbiddenError
from connectors.langfuse import ApiKeySummary, LangfuseMemberships, Membership, OrganizationProject
from connectors.langfuse.memberships import ROLE_RANK
from flows.compliance.inventory import Connections, EntryStatus, Inventory, collect_inventory, parallel, problem_lines
from flows.config.model import AccessLists, AccessPolicy, PolicyConfig, RotationConfig
from flows.config.templates import expand
from flows.config.transport import transport_risks
from flows.errors import ConfigError
from flows.models import ExitCode
from flows.redact import scrub
from flows.shown import markdown_code, markdown_key, markdown_text

Severity = Literal["high", "medium", "low"]
RULES = (
    "key-overdue",
    "key-due-soon",
    "stray-key",
    "shared-key",
    "wrong-scope",
    "rotation-stuck",
    "consumer-drift",
    "access",
    "location-collision",
    "unsafe-project-name",
    "plaintext-transport",
)
_SEVERITY_ORDER = {"high": 0, "medium": 1, "low": 2}


class Finding(BaseModel):
    """One breach of the checklist. ``subject`` (who or what, beyond entry and key) only tells
    findings apart when comparing two reports; it is not part of the output."""

    rule: str
    severity: Severity
    entry: str | None = None
    project: str | None = None
    public_key: str | None = None
    detail: str
    subject: str | None = Field(default=None, exclude=True)

    def identity(self) -> str:
        """Stable across days: what changes daily (ages, hours) lives only in ``detail``."""
        return "|".join(
            [self.rule, self.severity, self.entry or "", self.project or "", self.public_key or "", self.subject or ""]
        )

    def contract_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "severity": self.severity,
            "entry": self.entry,
            "project": self.project,
            "public_key": self.public_key,
            "detail": scrub(self.detail),
        }


class NotChecked(BaseModel):
    """Rules that could not be checked for an entry, a project or the organization, and why: a
    check whose data could not be read finds nothing from what is missing, and says so."""

    rules: list[str]
    entry: str | None = None
    project: str | None = None
    reason: str

    def contract_dict(self) -> dict[str, Any]:
        return {"rules": self.rules, "entry": self.entry, "project": self.project, "reason": scrub(self.reason)}

    def line(self) -> str:
        where = f"project {self.project}" if self.project else "the organization"
        if self.entry:
            where = f"entry {self.entry}"
        return f"{', '.join(self.rules)} for {where}: {self.reason}"


class Report(BaseModel):
    findings: list[Finding]
    checked_at: datetime
    errors: list[str] = []
    """What could not be read (the report is then incomplete: exit 1)."""
    not_checked: list[NotChecked] = []
    """Which rules could not run for what (what could not be read, or a consumer that did not answer)."""
    problems: list[str] = []
    """``errors`` as the command line says them: each once (an entry's problem shared by several
    entries in one line)."""

    @property
    def exit_code(self) -> ExitCode:
        if self.errors:
            return ExitCode.FAILED
        return ExitCode.NEEDS_ATTENTION if self.findings else ExitCode.OK

    @property
    def complete(self) -> bool:
        return not self.errors and not self.not_checked

    def summary(self) -> str:
        """One line: the findings, and whether every check ran (never "no findings" when not)."""
        if self.complete:
            return f"{len(self.findings)} finding(s)" if self.findings else "no findings"
        if self.findings:
            return f"{len(self.findings)} finding(s) among the checks that ran; the report is incomplete"
        return "the checks that ran found nothing; the report is incomplete"

    def fingerprint(self) -> str:
        """Changes exactly when a finding appears or disappears (not when an age ticks on)."""
        identities = sorted({f.identity() for f in self.findings})
        return hashlib.sha256(json.dumps(identities).encode()).hexdigest()

    def highest(self) -> Severity | None:
        return min((f.severity for f in self.findings), key=_SEVERITY_ORDER.__getitem__, default=None)

    def contract_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "findings": [f.contract_dict() for f in self.findings],
            "checked_at": self.checked_at.astimezone(UTC).isoformat(),
        }
        if self.errors:
            data["error"] = scrub("; ".join(self.errors))
        if self.not_checked:
            data["not_checked"] = [n.contract_dict() for n in self.not_checked]
        return data


class OrgFacts(BaseModel):
    """What the report reads about the organization beyond the entries."""

    projects: list[OrganizationProject] = []
    other_project_keys: dict[str, list[ApiKeySummary]] = {}
    """Keys of organization projects no entry covers (project id -> keys)."""
    org_memberships: list[Membership] | None = None
    project_memberships: dict[str, list[Membership]] = {}
    access_unavailable: str | None = None
    """Why memberships could not be checked (the instance lacks the entitlement), if so."""
    unread: dict[str, str] = {}
    """What of the organization could not be read (``projects``, ``memberships``, or a project id
    whose key list failed) -> why."""


# --- reading ------------------------------------------------------------------------------------


def collect_report(config: RotationConfig, *, now: datetime | None = None) -> Report:
    """Read everything the rules need (read-only, in parallel) and evaluate them."""
    now = now or datetime.now(UTC)
    conns = Connections(config)
    try:
        inventory = collect_inventory(config, connections=conns, now=now)
        errors = list(inventory.errors)
        if _admin_available(conns):
            org = _read_org(conns, config, inventory, errors)
        else:
            org = OrgFacts(unread={"organization": "the organization key could not be read"})
    finally:
        conns.close()
    from_config = [*_template_refusals(config, org), *_plaintext_transport(config)]
    findings = evaluate(config.policy, inventory, org, now, from_config)
    problems = problem_lines(inventory) + [e for e in errors if e not in inventory.errors]
    return Report(
        findings=findings,
        checked_at=now,
        errors=errors,
        not_checked=not_checked(config.policy, inventory, org),
        problems=problems,
    )


def _admin_available(conns: Connections) -> bool:
    """Whether the organization key could be read (the inventory already named it if not)."""
    try:
        conns.admin  # noqa: B018
    except (ConnectorError, ConfigError):
        return False
    return True


def _read_org(conns: Connections, config: RotationConfig, inventory: Inventory, errors: list[str]) -> OrgFacts:
    org = OrgFacts()
    try:
        org.projects = conns.admin.list_projects()
    except ConnectorError as exc:
        errors.append(f"the organization's projects: {_line(exc)}")
        org.unread["projects"] = "the organization's projects could not be read"
        return org
    covered = {e.project_id for e in config.projects}
    others = [p for p in org.projects if p.id not in covered]

    def keys_of(project: OrganizationProject) -> tuple[str, list[ApiKeySummary] | str]:
        try:
            return project.id, conns.admin.list_api_keys(project.id)
        except ConnectorError as exc:
            return project.id, f"Langfuse keys of project {project.id}: {_line(exc)}"

    for project_id, found in parallel(keys_of, others):
        if isinstance(found, str):
            errors.append(found)
            org.unread[project_id] = "its key list could not be read"
        else:
            org.other_project_keys[project_id] = found
    if config.policy.access is not None:
        _read_memberships(conns, org, errors)
    return org


def _read_memberships(conns: Connections, org: OrgFacts, errors: list[str]) -> None:
    members = LangfuseMemberships(conns.admin)
    try:
        org.org_memberships = members.organization()
    except LangfuseForbiddenError as exc:
        org.access_unavailable = _line(exc)
        return
    except ConnectorError as exc:
        errors.append(f"the organization's memberships: {_line(exc)}")
        org.unread["memberships"] = "the organization's memberships could not be read"
        return

    def of(project: OrganizationProject) -> tuple[str, list[Membership] | ConnectorError]:
        try:
            return project.id, members.project(project.id)
        except ConnectorError as exc:
            return project.id, exc

    for project_id, found in parallel(of, org.projects):
        if isinstance(found, LangfuseForbiddenError):
            org.access_unavailable = org.access_unavailable or _line(found)  # e.g. no project-roles entitlement
        elif isinstance(found, ConnectorError):
            errors.append(f"the memberships of project {project_id}: {_line(found)}")
            org.unread[f"memberships:{project_id}"] = f"the memberships of project {project_id} could not be read"
        else:
            org.project_memberships[project_id] = found


# --- the rules ----------------------------------------------------------------------------------


def evaluate(
    policy: PolicyConfig, inventory: Inventory, org: OrgFacts, now: datetime, from_config: Iterable[Finding] = ()
) -> list[Finding]:
    """The rules over what was read; ``from_config``: findings about the configuration itself."""
    findings = [
        *from_config,
        *_key_age(policy, inventory.entries),
        *_stray_keys(inventory, org),
        *_shared_keys(inventory.entries),
        *_wrong_scope(inventory.entries),
        *_rotation_stuck(policy, inventory.entries),
        *_consumer_drift(inventory.entries),
        *_access(policy.access, org),
    ]
    return sorted(
        findings, key=lambda f: (_SEVERITY_ORDER[f.severity], RULES.index(f.rule), f.entry or "", f.project or "")
    )


def _template_refusals(config: RotationConfig, org: OrgFacts) -> Iterable[Finding]:
    """``location-collision`` (high): a project whose generated entry would take another's secret
    or the organization key's; ``unsafe-project-name`` (medium): a project whose name or id cannot
    be put into ``project_template.path`` as it is. Neither is ever written (docs/fleet.md "Entry templates")."""
    if config.project_template is None or not org.projects:
        return
    _, generated = expand(config, org.projects, warn=False)
    for g in generated:
        if g.refused is None:
            continue
        yield Finding(
            rule=g.refused.rule,
            severity="high" if g.refused.rule == "location-collision" else "medium",
            entry=g.refused.other_entry,
            project=g.project_id,
            subject=g.project_id,
            detail=g.problem or "",
        )


def _plaintext_transport(config: RotationConfig) -> Iterable[Finding]:
    """``plaintext-transport``: keys over plain HTTP to a host that is not loopback (high), a Vault
    store that does not check the server's certificate (medium)."""
    for risk in transport_risks(config):
        yield Finding(
            rule="plaintext-transport", severity=risk.severity, entry=risk.entry, subject=risk.field, detail=risk.line()
        )


def _key_age(policy: PolicyConfig, entries: Iterable[EntryStatus]) -> Iterable[Finding]:
    for e in entries:
        if e.age_unknown is not None and e.public_key is not None:
            # A rotation time in the future (flows.clock) is no fresh key: its age is unknown.
            yield Finding(
                rule="key-overdue",
                severity="high",
                entry=e.project,
                public_key=e.public_key,
                detail=f"key age unknown: {e.age_unknown}; treat it as overdue: "
                f"langfuse-rotate rotate --project {e.project}",
            )
            continue
        if e.age_days is None or e.public_key is None:
            continue
        source = "last rotated" if e.age_source == "rotation" else "created in Langfuse"
        if e.age_days > policy.max_key_age_days:
            yield Finding(
                rule="key-overdue",
                severity="high",
                entry=e.project,
                public_key=e.public_key,
                detail=f"key is {e.age_days} days old ({source}), over the {policy.max_key_age_days}-day limit: "
                f"langfuse-rotate rotate --project {e.project}",
            )
        elif e.age_days > policy.max_key_age_days - policy.warn_days:
            left = policy.max_key_age_days - e.age_days
            yield Finding(
                rule="key-due-soon",
                severity="low",
                entry=e.project,
                public_key=e.public_key,
                detail=f"key is {e.age_days} days old ({source}); due for rotation within {left} days",
            )


def _stray_keys(inventory: Inventory, org: OrgFacts) -> Iterable[Finding]:
    # A key any entry stores or stages is tracked, whatever its project (a key in the wrong
    # project is wrong-scope's finding, not a stray one).
    # A project with an entry whose store could not be read is not checked: that entry's own key
    # would look stray (``not_checked`` says so instead).
    tracked: set[str] = set()
    owners: dict[str, list[str]] = defaultdict(list)
    unknown = {e.project_id for e in inventory.entries if not e.store_read}
    for e in inventory.entries:
        owners[e.project_id].append(e.project)
        pending = [e.pending.new_public_key, e.pending.old_public_key] if e.pending else []
        tracked.update(k for k in [e.public_key, *pending] if k)
    now = inventory.checked_at
    for project_id, keys in inventory.project_keys.items():
        if project_id in unknown:
            continue
        for key in keys:
            if key.public_key in tracked:
                continue
            entries = owners[project_id]
            yield Finding(
                rule="stray-key",
                severity="medium",
                entry=entries[0] if len(entries) == 1 else None,
                project=project_id,
                public_key=key.public_key,
                subject=key.id,
                detail=f"key {key.public_key} in project {project_id} is no entry's current or staged key "
                f"({_age(key, now)}, note {key.note!r}); delete it if nothing uses it",
            )
    names = {p.id: p.name for p in org.projects}
    for project_id, keys in org.other_project_keys.items():
        for key in keys:
            if key.public_key in tracked:
                continue
            yield Finding(
                rule="stray-key",
                severity="low",
                project=project_id,
                public_key=key.public_key,
                subject=key.id,
                detail=f"key {key.public_key} in project {names.get(project_id, project_id)!r} ({project_id}), "
                f"which no entry covers ({_age(key, now)}, note {key.note!r}); add an entry for it or delete it",
            )


def _age(key: ApiKeySummary, now: datetime) -> str:
    created = key.created_at if key.created_at.tzinfo else key.created_at.replace(tzinfo=UTC)
    return f"{max((now - created) // timedelta(days=1), 0)} days old"


def _shared_keys(entries: list[EntryStatus]) -> Iterable[Finding]:
    users: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for e in entries:
        if e.public_key:
            users[e.public_key][e.project].append("stored")
        for consumer, key in e.consumers.items():
            if key:
                users[key][e.project].append(f"consumer {consumer}")
    for key, by_entry in users.items():
        if len(by_entry) < 2:
            continue
        how = "; ".join(f"{name}: {', '.join(uses)}" for name, uses in sorted(by_entry.items()))
        for name in sorted(by_entry):
            yield Finding(
                rule="shared-key",
                severity="high",
                entry=name,
                public_key=key,
                detail=f"one key for {len(by_entry)} entries ({how}); give each service and environment its own key",
            )


def _wrong_scope(entries: Iterable[EntryStatus]) -> Iterable[Finding]:
    for e in entries:
        if e.public_key is None and e.store_read:
            yield Finding(
                rule="wrong-scope",
                severity="high",
                entry=e.project,
                detail=f"no pair is stored at {e.store_location or e.path}: consumers have no key to read",
            )
        elif e.authenticates is False:
            yield Finding(
                rule="wrong-scope",
                severity="high",
                entry=e.project,
                public_key=e.public_key,
                detail=f"the stored pair does not authenticate (401) on Langfuse; consumers reading "
                f"{e.store_location or e.path} cannot send traces",
            )
        elif e.authenticates and e.authenticated_project_id and e.authenticated_project_id != e.project_id:
            yield Finding(
                rule="wrong-scope",
                severity="high",
                entry=e.project,
                public_key=e.public_key,
                detail=f"the stored pair authenticates to project {e.authenticated_project_id}, "
                f"not the entry's project {e.project_id}",
            )


def _rotation_stuck(policy: PolicyConfig, entries: Iterable[EntryStatus]) -> Iterable[Finding]:
    for e in entries:
        p = e.pending
        if p is None or p.hours <= policy.max_pending_hours:
            continue
        yield Finding(
            rule="rotation-stuck",
            severity="medium",
            entry=e.project,
            public_key=p.new_public_key,
            subject=p.rotation_id,
            detail=f"{p.mode} rotation {p.rotation_id} staged {p.hours:g} h ago (limit "
            f"{policy.max_pending_hours:g} h){', promoted' if p.promoted else ''}: "
            f"langfuse-rotate reconcile --project {e.project}",
        )


def _consumer_drift(entries: Iterable[EntryStatus]) -> Iterable[Finding]:
    for e in entries:
        if not e.public_key:
            continue
        for consumer, key in e.consumers.items():
            if key and key != e.public_key:
                yield Finding(
                    rule="consumer-drift",
                    severity="medium",
                    entry=e.project,
                    public_key=key,
                    subject=consumer,
                    detail=f"consumer {consumer} reports {key}, not the entry's current key {e.public_key}; restart it",
                )


def _access(policy: AccessPolicy | None, org: OrgFacts) -> Iterable[Finding]:
    if policy is None:
        return
    if org.access_unavailable is not None:
        what = "project memberships" if org.org_memberships is not None else "memberships"
        yield Finding(
            rule="access",
            severity="low",
            detail=f"{what} could not be checked: {org.access_unavailable}",
            subject="unavailable",
        )
    if org.org_memberships is not None:
        yield from _check_members(policy, policy, org.org_memberships, where="organization", project=None)
    names = {p.id: p.name for p in org.projects}
    for project_id, members in org.project_memberships.items():
        extra = policy.projects.get(project_id) or policy.projects.get(names.get(project_id, ""))
        lists = _merged(policy, extra)
        label = f"project {names.get(project_id, project_id)!r}"
        yield from _check_members(policy, lists, members, where=label, project=project_id)


def _merged(base: AccessLists, extra: AccessLists | None) -> AccessLists:
    if extra is None:
        return base
    return AccessLists(
        owners=[*base.owners, *extra.owners],
        admins=[*base.admins, *extra.admins],
        members=[*base.members, *extra.members],
        max_owners=extra.max_owners if extra.max_owners is not None else base.max_owners,
    )


def _allowed_rank(lists: AccessLists, default_role: str, email: str) -> int:
    email = email.lower()
    for role, people in (("OWNER", lists.owners), ("ADMIN", lists.admins), ("MEMBER", lists.members)):
        if email in {p.lower() for p in people}:
            return max(ROLE_RANK[role], ROLE_RANK[default_role])
    return ROLE_RANK[default_role]


def _check_members(
    policy: AccessPolicy, lists: AccessLists, members: list[Membership], *, where: str, project: str | None
) -> Iterable[Finding]:
    for m in members:
        who = m.email or m.user_id
        held = ROLE_RANK.get(m.role, max(ROLE_RANK.values()))
        if held > _allowed_rank(lists, policy.default_role, who):
            yield Finding(
                rule="access",
                severity="high" if held >= ROLE_RANK["ADMIN"] else "medium",
                project=project,
                subject=f"{who}:{m.role}",
                detail=f"{who} is {m.role} in the {where} but is not listed for it in policy.access "
                f"(default role {policy.default_role})",
            )
    owners = [m.email or m.user_id for m in members if m.role == "OWNER"]
    if lists.max_owners is not None and len(owners) > lists.max_owners:
        yield Finding(
            rule="access",
            severity="medium",
            project=project,
            subject="max-owners",
            detail=f"the {where} has {len(owners)} owners ({', '.join(owners)}), more than policy.access "
            f"max_owners {lists.max_owners}",
        )


def _line(exc: BaseException) -> str:
    return scrub(" ".join((str(exc) or type(exc).__name__).split()))


# --- what could not be checked -------------------------------------------------------------------

_ENTRY_RULES = ["key-overdue", "key-due-soon", "wrong-scope", "rotation-stuck", "consumer-drift", "shared-key"]


def not_checked(policy: PolicyConfig, inventory: Inventory, org: OrgFacts) -> list[NotChecked]:
    """Every rule that could not run, for what, and why (the rules themselves skip what is missing)."""
    missed: list[NotChecked] = []
    for e in inventory.entries:
        if not e.store_read:
            missed.append(NotChecked(rules=_ENTRY_RULES, entry=e.project, reason="its store could not be read"))
            missed.append(
                NotChecked(
                    rules=["stray-key"],
                    project=e.project_id,
                    reason=f"the stored key of entry {e.project} could not be read",
                )
            )
            continue
        if e.public_key and e.age_days is None:
            missed.append(
                NotChecked(
                    rules=["key-overdue", "key-due-soon"],
                    entry=e.project,
                    reason="the key's age is unknown: no rotation facts in the store and Langfuse's key list "
                    "could not be read",
                )
            )
        if e.public_key and e.authenticates is None:
            missed.append(
                NotChecked(rules=["wrong-scope"], entry=e.project, reason="Langfuse could not check the stored pair")
            )
        for consumer, error in e.consumer_errors.items():
            missed.append(
                NotChecked(
                    rules=["consumer-drift", "shared-key"],
                    entry=e.project,
                    reason=f"consumer {consumer} could not be read ({error})",
                )
            )
    configured = dict.fromkeys(e.project_id for e in inventory.entries)
    readable = {e.project_id for e in inventory.entries if e.store_read}
    for project_id in configured:
        if project_id in readable and project_id not in inventory.project_keys:
            missed.append(NotChecked(rules=["stray-key"], project=project_id, reason="its key list could not be read"))
    organization = org.unread.get("organization") or org.unread.get("projects")
    if organization:
        missed.append(NotChecked(rules=["stray-key"], reason=f"{organization} (keys in projects no entry covers)"))
        if policy.access is not None:
            missed.append(NotChecked(rules=["access"], reason=f"{organization} (memberships)"))
    for project_id, reason in org.unread.items():
        if project_id in ("organization", "projects") or project_id.startswith("memberships"):
            continue
        missed.append(NotChecked(rules=["stray-key"], project=project_id, reason=reason))
    for what, reason in org.unread.items():
        if what.startswith("memberships"):
            missed.append(NotChecked(rules=["access"], project=what.partition(":")[2] or None, reason=reason))
    return _deduplicated(missed)


def _deduplicated(items: list[NotChecked]) -> list[NotChecked]:
    seen: set[str] = set()
    kept = []
    for item in items:
        if item.line() not in seen:
            seen.add(item.line())
            kept.append(item)
    return kept


# --- output -------------------------------------------------------------------------------------


def report_lines(report: Report) -> list[str]:
    """The human report: first what could not be checked, then the findings. Why something could
    not be read is said once, on stderr (``Report.problems``)."""
    lines: list[str] = []
    if report.not_checked:
        lines.append("not checked:")
        lines += [f"  {n.line()}" for n in report.not_checked]
    lines.append(report.summary() + (":" if report.findings else ""))
    for f in report.findings:
        where = f.entry or (f"project {f.project}" if f.project else "organization")
        lines.append(f"  {f.severity:<6} {f.rule:<19} {where}: {scrub(f.detail)}")
    return lines


def report_markdown(report: Report) -> str:
    counts: dict[str, int] = defaultdict(int)
    for f in report.findings:
        counts[f.severity] += 1
    summary = ", ".join(f"{counts[s]} {s}" for s in ("high", "medium", "low") if counts[s]) or "none"
    lines = [
        "# Langfuse key compliance report",
        "",
        f"Checked at {report.checked_at.astimezone(UTC).isoformat(timespec='seconds')}; findings: {summary}"
        + ("." if report.complete else " among the checks that ran; **the report is incomplete**."),
        "",
    ]
    if report.not_checked:
        lines += ["## Not checked", "", *[f"- {n.line()}" for n in report.not_checked], ""]
    if report.findings:
        lines += ["| severity | rule | entry / project | public key | detail |", "|---|---|---|---|---|"]
        for f in report.findings:
            # Project ids, keys and details come from Langfuse: shown only as checked and escaped.
            where = f.entry or (f"project {markdown_code(f.project)}" if f.project else "organization")
            key = markdown_key(f.public_key) if f.public_key else ""
            lines.append(f"| {f.severity} | {f.rule} | {where} | {key} | {markdown_text(f.detail)} |")
    elif report.complete:
        lines.append("No findings: every rule of the checklist holds.")
    else:
        lines.append("The checks that ran found nothing.")
    if report.errors:
        lines += ["", "## Could not read", "", *[f"- {markdown_text(e)}" for e in report.errors]]
    return scrub("\n".join(lines))


def report_table(report: Report) -> list[dict[str, Any]]:
    """The table artifact's rows (the ``--json`` findings)."""
    return [f.contract_dict() for f in report.findings]
