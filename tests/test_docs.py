"""The Markdown files of the repo: every table renders as a table as GitHub shows it (CommonMark with the GFM
table extension), the README stays short, and every relative link leads to a file and heading that exist."""

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

CHECKOUT = Path(__file__).resolve().parent.parent
README = CHECKOUT / "README.md"
DOCS = CHECKOUT / "docs"
MARKDOWN = [README, CHECKOUT / "DEVELOPERS.md", CHECKOUT / "BENCHMARKS.md", *sorted(DOCS.glob("*.md"))]
README_MAX_WORDS = 2500
# Links in raw HTML (the README's header, pictures).
_HTML_LINK = re.compile(r"""(?:src|href)="([^"]+)\"""")
_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _tokens(path: Path) -> list[Token]:
    return MarkdownIt("commonmark").enable("table").parse(path.read_text(encoding="utf-8"))


def _cells(line: str) -> int:
    """The cells of one pipe-table row as GFM splits it: at unescaped pipes, without the outer ones."""
    row = line.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return len(_UNESCAPED_PIPE.split(row))


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(CHECKOUT)))
def test_every_pipe_table_renders_as_a_table_with_full_rows(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    tokens = _tokens(path)
    tables = [token.map for token in tokens if token.type == "table_open"]
    code = [token.map for token in tokens if token.type in ("fence", "code_block", "html_block")]
    for start, end in tables:
        # GFM ends a table only at a blank line: a paragraph right under it would render as junk rows.
        strays = [number + 1 for number in range(start, end) if not lines[number].startswith("|")]
        assert not strays, f"{path.name}: lines {strays} are read as rows of the table at line {start + 1}"
        header = _cells(lines[start])
        short = [number + 1 for number in range(start, end) if _cells(lines[number]) != header]
        assert not short, f"{path.name}: rows at lines {short} lack or add cells to the {header} of line {start + 1}"
    inside = {number for start, end in tables + code for number in range(start, end)}
    loose = [number + 1 for number, line in enumerate(lines) if line.startswith("|") and number not in inside]
    assert not loose, f"{path.name}: lines {loose} start with '|' but render as text, not as a table"


def test_the_readme_has_at_most_2500_words():
    words = len(README.read_text(encoding="utf-8").split())
    assert words <= README_MAX_WORDS, f"README.md has {words} words (wc -w); move details to docs/"


def _plain(inline: Token) -> str:
    return "".join(child.content for child in inline.children or () if child.type in ("text", "code_inline"))


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation but '-' and '_' dropped, spaces
    as '-', a repeated one suffixed -1, -2, ..."""
    tokens = _tokens(path)
    anchors: set[str] = set()
    for index, token in enumerate(tokens):
        if token.type == "heading_open":
            slug = re.sub(r"[^\w\- ]", "", _plain(tokens[index + 1]).strip().lower()).replace(" ", "-")
            anchor, repeat = slug, 0
            while anchor in anchors:
                repeat += 1
                anchor = f"{slug}-{repeat}"
            anchors.add(anchor)
    return anchors


def _links(path: Path) -> list[str]:
    links = []
    for token in _tokens(path):
        if token.type in ("html_block", "html_inline"):
            links += _HTML_LINK.findall(token.content)
        for child in [token, *(token.children or ())]:
            if child.type == "link_open":
                links.append(str(child.attrs["href"]))
            if child.type in ("html_inline",):
                links += _HTML_LINK.findall(child.content)
            if child.type == "image":
                links.append(str(child.attrs["src"]))
    return links


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda path: str(path.relative_to(CHECKOUT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(path):
    broken = []
    for link in _links(path):
        parts = urlsplit(link)
        if parts.scheme or parts.netloc:
            continue
        target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        if not target.exists():
            broken.append(f"{link}: no file {target.relative_to(CHECKOUT)}")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in _anchors(target):
            broken.append(f"{link}: no heading #{parts.fragment} in {target.relative_to(CHECKOUT)}")
    assert not broken, f"{path.name}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / urlsplit(link).path).resolve() for link in _links(README)}
    assert DOCS.glob("*.md") and {page for page in DOCS.glob("*.md") if page.resolve() not in linked} == set()
