"""Links in README.md and docs/*.md: every relative link and image resolves, every anchor exists.

Pure Python, no warm-ray import. A relative link must name an existing file or directory (relative
to the Markdown file that holds it); a ``#anchor``, in the same page or after a ``.md`` target, must
be the anchor GitHub gives one of the target's headings. External links (``http(s)://``,
``mailto:``) are not followed. ``docs/results.md`` is linked from the README and must exist.
"""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)[ \t]*#*[ \t]*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
# [text](target "title") and ![alt](target); the text may hold one level of brackets
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(].*?[\"')])?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:[ \t]*<?([^\s>]+)>?", re.M)
HTML_LINK = re.compile(r"<(?:img|a|source)\b[^>]*?\b(?:src|href)\s*=\s*[\"']([^\"']+)[\"']", re.I)
HTML_ANCHOR = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*[\"']([^\"']+)[\"']", re.I)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)


def prose(text: str) -> str:
    """The page with its fenced code blocks blanked (line numbers kept) and its code spans masked
    (same length, so a link whose text is a code span still reads as a link, and a link written
    inside a code span does not)."""
    fence = None
    lines = []
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and fence is None:
            fence = m.group(1)
            lines.append("")
        elif fence is not None:
            if m and m.group(1) == fence:
                fence = None
            lines.append("")
        else:
            lines.append(CODE_SPAN.sub(lambda c: "c" * len(c.group(0)), line))
    return "\n".join(lines)


def heading_text(raw: str) -> str:
    """The text GitHub renders for a heading's Markdown: links, emphasis and HTML unwrapped outside
    code spans, code spans kept as their text."""
    parts = CODE_SPAN.split(raw)  # [prose, ticks, code, prose, ticks, code, ..., prose]
    out = []
    for i, part in enumerate(parts):
        if i % 3 == 2:
            out.append(part.strip())
        elif i % 3 == 0:
            part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)
            part = re.sub(r"<[^>]+>", "", part)
            out.append(re.sub(r"(\*\*|__|\*|~~)(?=\S)(.+?)(?<=\S)\1", r"\2", part))
    return "".join(out).strip()


def slug(text: str) -> str:
    """GitHub's anchor for a heading's text (github-slugger): lower case; letters, marks, decimal
    digits, '_' (and the other connector punctuation), '-' and spaces kept, every other character
    (ASCII and Unicode punctuation and symbols: '.', '`', '–', '×', '≥', '²', ...) dropped; each
    space becomes '-'."""
    out = []
    for ch in text.lower():
        cat = unicodedata.category(ch)
        if ch in " -" or cat[0] in "LM" or cat in ("Nd", "Pc"):
            out.append("-" if ch == " " else ch)
    return "".join(out)


def anchors(page: Path) -> set[str]:
    """Every anchor of a page's headings, with GitHub's -1, -2, ... for repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    text = page.read_text(encoding="utf-8")
    masked = prose(text).splitlines()
    for line, outside in zip(text.splitlines(), masked):
        if not outside:
            continue
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(heading_text(m.group(2)))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    # explicit HTML anchors: <a name="x"></a>, <span id="x">
    found.update(m.group(1) for m in HTML_ANCHOR.finditer(prose(text)))
    return found


def links(page: Path):
    """(line number, target) of every link and image source of a page, outside code."""
    text = prose(page.read_text(encoding="utf-8"))
    found = [(m.start(), m.group(1)) for m in REFERENCE_DEF.finditer(text)]
    found += [(m.start(), m.group(1)) for pattern in (INLINE_LINK, HTML_LINK) for m in pattern.finditer(text)]
    for start, target in sorted(found):
        yield text.count("\n", 0, start) + 1, target


def check(page: Path, root: Path = ROOT) -> list[str]:
    """One line per broken link or image of a page."""
    problems = []
    root, page = root.resolve(), page.resolve()
    rel = page.relative_to(root)
    for number, target in links(page):
        where = f"{rel}:{number}: {target!r}"
        if not target or EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?", 1)[0])
        dest = (page.parent / path_part).resolve() if path_part else page
        if path_part and not dest.exists():
            shown = dest.relative_to(root) if dest.is_relative_to(root) else dest
            problems.append(f"{where}: no such file {shown}")
            continue
        if anchor and dest.suffix.lower() == ".md" and dest.is_file():
            if unquote(anchor) not in anchors(dest):
                problems.append(f"{where}: no heading of {dest.relative_to(root)} has the anchor #{anchor}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_anchors_resolve(page):
    problems = check(page)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_results_page_exists():
    # linked from the README's Results section and from docs/: it must be there, not merely linkable
    assert (ROOT / "docs" / "results.md").is_file(), "docs/results.md is missing (linked from README.md)"


def test_readme_keeps_the_ci_test_command():
    # .ci/run and scripts/test.sh name the README's test command; it must stay written as CI runs it
    assert "bash scripts/test.sh" in (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("text, expected", [
    ("Sampling while learning (`rl.overlap`), and the run's wall time",
     "sampling-while-learning-rloverlap-and-the-runs-wall-time"),
    ("WARM's precondition: linear mode connectivity, and the member recipe",
     "warms-precondition-linear-mode-connectivity-and-the-member-recipe"),
    ("Reusing the RL actors (WARP, `warm-ray rl`, the study's arms)",
     "reusing-the-rl-actors-warp-warm-ray-rl-the-studys-arms"),
    ("Ramé – 4 × 128, β ≥ 0.5", "ramé--4--128-β--05"),
    ("RM_paths and **bold** [a link](x.md), `__init__`, m²", "rm_paths-and-bold-a-link-__init__-m"),
])
def test_slug_follows_github(text, expected):
    assert slug(heading_text(text)) == expected


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Top `x` – é\n\n## Top `x` – é\n", encoding="utf-8")
    page = tmp_path / "p.md"
    page.write_text(
        "# Here\n[ok](a.md#top-x--é) [ok2](a.md#top-x--é-1) [in](#here) [web](https://x.invalid/#nope)\n"
        "[bad file](b.md) [bad anchor](a.md#nope) ![img](img/none.png) <img src=\"img/gone.png\">\n"
        "`[not a link](nowhere.md)`\n```\n[in code](nowhere.md)\n```\n[wrapped\nlink](c.md)\n", encoding="utf-8")
    problems = check(page, tmp_path)
    assert len(problems) == 5, problems
    assert any("b.md" in p for p in problems) and any("#nope" in p for p in problems)
    assert any(p.startswith("p.md:8: 'c.md'") for p in problems)
    assert any("none.png" in p for p in problems) and any("gone.png" in p for p in problems)
