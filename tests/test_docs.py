"""The repository stands on its own: no file cites a document outside it, and every section of ``docs/``
that the code cites exists (a page and a numbered heading; a lettered item such as (b) where one is named)."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Built from pieces so that this file does not match itself.
OUTSIDE = [re.compile(p) for p in (
    r"shared/" + r"research", r"shared/" + r"design", r"\.\./" + r"shared\b",
    # the research notes the docs were written from: they are not part of the repository
    r"\b(?:longvq_mega_lra|ovq_" + r"recall|repo_style_" + r"anchors|data_" + r"sources|layout_" + r"sketch)\.md\b",
)]

PAGE = re.compile(r"docs/([A-Za-z0-9_]+\.md)")
NUM = r"\d+(?:\.\d+)*"
# §3.5, §1.2(b), §1.2(b)6, §1.2d, §4.1–4.2, §3–4
SECTION = re.compile(rf"§\s*({NUM})(?:\(([a-z])\)|([a-z])\b)?\d*(?:\s*[–-]\s*({NUM}))?")
PAPER = re.compile(r"paper'?s?\W{0,3}$", re.IGNORECASE)
GAP = 4
TRAILING_PAGE = re.compile(r"^\s*of\W{0,3}docs/([A-Za-z0-9_]+\.md)")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "data", "logs"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None          # binary files (plots, checkpoints) cite nothing


def headings(page: Path) -> dict[str, str]:
    """Section number -> the text of that section (up to the next heading of any level)."""
    out, current, lines = {}, None, []
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(rf"#{{2,6}}\s+({NUM})\.?\s", line)
        if m or line.startswith("#"):
            if current:
                out[current] = "\n".join(lines)
            current, lines = (m.group(1) if m else None), []
        elif current:
            lines.append(line)
    if current:
        out[current] = "\n".join(lines)
    return out


def citations(text: str) -> list[tuple[str, str, str | None, int]]:
    """(page, section, item letter, line) for every § reference that belongs to a docs page.

    A reference belongs to the page named right after it (``§4.2 of docs/x.md``) or to the page named last
    before it in the same citation: the same paragraph, at most ``GAP`` lines after the page or the
    previous reference of that citation (citations are often a page followed by an indented list of
    sections). References to a paper's own sections (``paper §5.1.2``) and stray ones are not docs
    citations."""
    found = []
    for para_match in re.finditer(r"(?:(?!\n\s*\n|\"\"\").)+", text, re.DOTALL):
        para, base = para_match.group(0), para_match.start()
        events = sorted([(m.start(), "page", m) for m in PAGE.finditer(para)]
                        + [(m.start(), "ref", m) for m in SECTION.finditer(para)], key=lambda e: e[0])
        page, last = None, None
        for pos, kind, m in events:
            line = text.count("\n", 0, base + pos) + 1
            if kind == "page":
                page, last = m.group(1), line
                continue
            after = TRAILING_PAGE.match(para[m.end():])
            if after:
                target = after.group(1)
            elif PAPER.search(para[max(0, pos - 10):pos]) or page is None or line - last > GAP:
                continue
            else:
                target, last = page, line
            for number in filter(None, (m.group(1), m.group(4))):
                found.append((target, number, m.group(2) or m.group(3), line))
    return found


def test_no_file_cites_a_path_outside_the_repository():
    bad = []
    for path in tracked_files():
        text = read_text(path)
        if text is None:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if any(p.search(line) for p in OUTSIDE):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not bad, "citations of documents outside the repository (cite docs/<page>.md §N instead):\n" + "\n".join(bad)


def code_citations():
    for path in tracked_files():
        rel = path.relative_to(ROOT)
        # this file's own examples cite made-up pages
        if rel.parts[0] in ("src", "tests") and path.suffix in (".py", ".yaml", ".md") and path != Path(__file__).resolve():
            text = read_text(path)
            if text is not None:
                for page, number, item, line in citations(text):
                    yield f"{rel}:{line}", page, number, item


def test_every_cited_docs_section_exists():
    cited = list(code_citations())
    assert len(cited) > 100, "the citation parser found almost nothing: it is broken"
    sections = {p.name: headings(p) for p in DOCS.glob("*.md")}
    bad = []
    for where, page, number, item in cited:
        if page not in sections:
            bad.append(f"{where}: docs/{page} does not exist")
        elif number not in sections[page]:
            bad.append(f"{where}: docs/{page} has no section {number}")
        elif item and f"({item})" not in sections[page][number]:
            bad.append(f"{where}: docs/{page} §{number} has no item ({item})")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("text, expected", [
    ("Spec: ``docs/a.md``\n  §3.1  x,\n  §1.2(b)6 y\n``docs/b.md`` §2.1–2.2 and §4",
     [("a.md", "3.1", None), ("a.md", "1.2", "b"), ("b.md", "2.1", None), ("b.md", "2.2", None), ("b.md", "4", None)]),
    ("The table (§4.2 of ``docs/c.md``) and how", [("c.md", "4.2", None)]),
    ("(paper §5.1.2, docs/a.md §5.3)", [("a.md", "5.3", None)]),
    ("docs/a.md §1\n\nan unrelated §7 in the next paragraph", [("a.md", "1", None)]),
    ("docs/a.md §1\n §2\n\n\n x\n\n", [("a.md", "1", None), ("a.md", "2", None)]),
    ("docs/a.md §1\nx\nx\nx\nx\n§5.1.1 far below, a paper's section", [("a.md", "1", None)]),
    ('"""docs/a.md §1"""\n"""a §2 in another docstring"""', [("a.md", "1", None)]),
    ("(docs/a.md §1.2d)", [("a.md", "1.2", "d")]),
])
def test_citation_parser(text, expected):
    assert [c[:3] for c in citations(text)] == expected


def test_headings_are_read_with_their_text(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Title\n## 1 One\ntext\n### 1.2 Sub\n**(a)** item\n## 2 Two\n")
    secs = headings(page)
    assert set(secs) == {"1", "1.2", "2"} and "(a)" in secs["1.2"] and "(a)" not in secs["1"]
