"""The README and docs/ hold together (README "Contents"): every relative link resolves, to a file and
to a heading as GitHub names it; every page in docs/ is linked from the README's contents; and the
README's top (what it is, the two commands, the sandbox) stays one screen long."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CONTENTS_HEADING = "## Contents"
MAX_TOP_LINES = 60

FENCE = re.compile(r"^ {0,3}(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def documents() -> list[Path]:
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans removed."""
    lines: list[tuple[int, str]] = []
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((number, INLINE_CODE.sub("", line)))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text as rendered (link targets, markup and HTML tags
    dropped), lower case, every character but letters, digits, ``_``, ``-`` and spaces removed,
    each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file: its headings' slugs (a repeated one gets ``-1``, ``-2``, ...)
    and explicit ``<a name>``/``<a id>`` anchors."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        found.update(HTML_ANCHOR.findall(line))
        match = HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            found.add(slug if count == 0 else f"{slug}-{count}")
    return found


@dataclass(frozen=True)
class Link:
    source: Path
    line: int
    target: str

    def __str__(self) -> str:
        return f"{self.source.relative_to(REPO)}:{self.line}: {self.target}"


def relative_links(path: Path) -> list[Link]:
    links: list[Link] = []
    for number, line in prose_lines(path.read_text()):
        targets = INLINE_LINK.findall(line)
        definition = REFERENCE_DEFINITION.match(line)
        if definition:
            targets.append(definition.group(1))
        links += [Link(path, number, t) for t in targets if t and not EXTERNAL.match(t)]
    return links


def resolve(link: Link) -> str | None:
    """Why the link does not resolve, or None when it does."""
    target, _, fragment = link.target.partition("#")
    file = (link.source.parent / unquote(target)).resolve() if target else link.source
    if not file.is_relative_to(REPO):
        return "points outside the repository"
    if not file.exists():
        return f"no such file: {file.relative_to(REPO)}"
    if fragment:
        if file.suffix != ".md" or file.is_dir():
            return "an anchor into a file that is not markdown"
        if unquote(fragment) not in anchors(file):
            return f"no heading with the anchor #{fragment} in {file.relative_to(REPO)}"
    return None


def test_the_slugs_follow_githubs_rules() -> None:
    assert github_slug("Try the commands on a local stack: `langfuse-rotate sandbox`") == (
        "try-the-commands-on-a-local-stack-langfuse-rotate-sandbox"
    )
    assert github_slug("The `compliance` deployment (daily)") == "the-compliance-deployment-daily"
    assert github_slug("Deployments and distributed mode") == "deployments-and-distributed-mode"
    assert github_slug("A [linked](x.md) snake_case heading") == "a-linked-snake_case-heading"


def test_a_broken_link_or_anchor_is_found() -> None:
    page = REPO / "docs" / "command-line.md"
    broken = [
        Link(page, 1, "no-such-page.md"),
        Link(page, 1, "configuration.md#no-such-heading"),
        Link(page, 1, "#no-such-heading"),
        Link(page, 1, "../../outside.md"),
    ]
    working = [Link(page, 1, "configuration.md#vault"), Link(page, 1, "../README.md#safety-guarantees")]

    assert all(resolve(link) for link in broken)
    assert not any(resolve(link) for link in working)


@pytest.mark.parametrize("path", documents(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_to_a_file_and_heading(path: Path) -> None:
    broken = [f"{link}: {why}" for link in relative_links(path) if (why := resolve(link))]

    assert not broken, "\n".join(broken)


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (README.parent / link.target.partition("#")[0]).resolve()
        for link in relative_links(README)
        if link.target.partition("#")[0]
    }
    pages = set((REPO / "docs").glob("*.md"))

    assert pages, "docs/ has pages"
    unlinked = sorted(str(p.relative_to(REPO)) for p in pages if p.resolve() not in linked)
    assert not unlinked, f"pages the README's contents do not link: {unlinked}"


def test_the_readmes_top_fits_one_screen_and_the_safety_guarantees_stay_in_it() -> None:
    lines = README.read_text().splitlines()

    assert CONTENTS_HEADING in lines, "the README has a table of contents"
    assert lines.index(CONTENTS_HEADING) <= MAX_TOP_LINES
    assert "## Safety guarantees" in lines[lines.index(CONTENTS_HEADING) :]
