"""The README and the docs pages: the README stays a short front page whose two commands are the ones
CI runs, every relative link in the hand-written pages leads to a file (and, with an anchor, to a
heading of it), and every page and every model of the model table is documented."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MAIN_COMMAND = "python -m pip install -e . && python examples/train_tall.py --model multvae tall"


def _pages() -> list[Path]:
    """The hand-written pages: README.md, docs/*.md and the results index (the other results pages are
    written by commands)."""
    return [README, *sorted((REPO / "docs").glob("*.md")), REPO / "docs" / "results" / "README.md"]


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for the headings of ``page``: lower case, punctuation other than ``-`` and
    ``_`` dropped, spaces made hyphens, a repeated heading numbered -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M),
                              flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(page: Path) -> list[str]:
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text()))
            if not re.match(r"[a-z]+:", t)]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= 200, f"README.md has {n} lines; move details to a docs/ page"


def test_readme_commands_are_the_ones_ci_runs():
    """The README's first two bash blocks are the main job and the test command, and the test command
    is exactly the last line of .ci/run."""
    text = README.read_text()
    blocks = [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)]
    ci_command = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()][-1].strip()
    assert blocks[:2] == [MAIN_COMMAND, ci_command], blocks[:2]
    assert "pytest" in ci_command and ".[test]" in ci_command


def test_every_relative_link_resolves():
    """Every relative link of README.md and the docs pages names an existing file or folder; a link
    into a Markdown page with ``#anchor`` names one of its headings."""
    bad = []
    for page in _pages():
        links = _links(page)
        assert page == REPO / "docs" / "results" / "README.md" or links, f"{page} links nowhere"
        for target in links:
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not bad, "\n".join(bad)


def test_the_link_check_can_fail(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A title\n\n## Two words\n\n[x](missing.md) [y](#two-words) [z](https://e.org)\n"
                    "`[w](in-code.md)`\n```\n[v](in-block.md)\n```\n")
    assert _links(page) == ["missing.md", "#two-words"]
    assert _anchors(page) == {"a-title", "two-words"}


def test_every_docs_page_is_listed_in_the_readme():
    listed = {(REPO / t).resolve() for t in _links(README)}
    missing = [p.name for p in sorted((REPO / "docs").glob("*.md")) if p.resolve() not in listed]
    assert not missing, f"docs pages not in the README's Documentation list: {missing}"


def test_every_model_is_documented():
    """Every name of the model table is in the README's brief table and described in docs/models.md."""
    from tall_jax.models import MODEL_TABLE

    readme = README.read_text()
    models = (REPO / "docs" / "models.md").read_text()
    for name in MODEL_TABLE:
        assert f"`{name}`" in readme, f"{name} is not in README.md"
        assert re.search(rf"^\|[^\n]*`{name}`[^\n]*\|", models, flags=re.M) or f"`--model {name}" in models, \
            f"{name} has no row in docs/models.md"
