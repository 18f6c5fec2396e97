"""Documents read into sections: Markdown, plain text, HTML and PDF.

A section is the text under one heading (its path of headings is the section's name), as a
list of blocks: paragraphs, lists, tables and code blocks, each kept whole where it can be.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePath

SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "text",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
_BLANK_LINES = re.compile(r"\n\s*\n")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+([.,;:!?)])")


class UnreadableDocument(ValueError):
    """A file that cannot be read as its kind of document; reported and skipped."""


@dataclass
class Section:
    heading: str
    blocks: list[str] = field(default_factory=list)


@dataclass
class Document:
    source: str
    title: str
    sections: list[Section]

    @property
    def empty(self) -> bool:
        return not any(section.blocks for section in self.sections)


def kind_of(path: PurePath) -> str | None:
    """The document kind by file suffix; None for files the knowledge base does not read."""
    return SUFFIXES.get(path.suffix.lower())


def parse(source: str, data: bytes, kind: str) -> Document:
    """Read `data` as a document of `kind`; raises UnreadableDocument with the reason."""
    if kind == "pdf":
        return _pdf(source, data)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UnreadableDocument(f"not UTF-8 text (byte {error.start})") from None
    if kind == "markdown":
        return _markdown(source, text)
    if kind == "html":
        return _html(source, text)
    if kind == "text":
        return _text(source, text)
    raise UnreadableDocument(f"unknown document kind {kind!r}")


def _default_title(source: str) -> str:
    return Path(source).stem.replace("-", " ").replace("_", " ").strip() or source


def _paragraphs(text: str) -> list[str]:
    return [block.strip() for block in _BLANK_LINES.split(text) if block.strip()]


def _text(source: str, text: str) -> Document:
    return Document(source, _default_title(source), [Section("", _paragraphs(text))])


def _markdown(source: str, text: str) -> Document:
    """Headings open sections; every top-level block is kept as written (lists, tables,
    fences), sliced from the source by the line ranges markdown-it reports."""
    from markdown_it import MarkdownIt

    lines = text.splitlines()
    tokens = MarkdownIt("commonmark").enable("table").parse(text)
    title = ""
    headings: list[tuple[int, str]] = []
    sections = [Section("")]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token.type == "heading_open":
            level = int(token.tag[1])
            name = tokens[index + 1].content.strip()
            if level == 1 and not title:
                title = name
            headings = [(depth, text) for depth, text in headings if depth < level]
            headings.append((level, name))
            path = " > ".join(text for depth, text in headings if depth > 1 or not title)
            sections.append(Section(path or name))
            index += 3
            continue
        if token.level == 0 and token.map is not None and token.nesting != -1:
            start, end = token.map
            block = "\n".join(lines[start:end]).strip()
            if block and not block.startswith("<!--"):
                sections[-1].blocks.append(block)
            # Skip to the token that closes this block.
            if token.nesting == 1:
                depth = 1
                while depth and index + 1 < len(tokens):
                    index += 1
                    depth += tokens[index].nesting if tokens[index].level == 0 else 0
        index += 1
    return Document(source, title or _default_title(source), [s for s in sections if s.blocks])


_HTML_BLOCKS = ("p", "li", "pre", "blockquote", "table", "dd", "dt", "figcaption")
_HTML_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")


def _html(source: str, text: str) -> Document:
    from bs4 import BeautifulSoup, Tag

    soup = BeautifulSoup(text, "html.parser")
    for unwanted in soup(["script", "style", "noscript", "nav", "footer", "header", "template"]):
        unwanted.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    root = soup.body or soup
    headings: list[tuple[int, str]] = []
    sections = [Section("")]
    for element in root.find_all([*_HTML_HEADINGS, *_HTML_BLOCKS]):
        if not isinstance(element, Tag):
            continue
        if element.name in _HTML_HEADINGS:
            level = int(element.name[1])
            name = element.get_text(" ", strip=True)
            if level == 1 and not title:
                title = name
            headings = [(depth, text) for depth, text in headings if depth < level]
            headings.append((level, name))
            sections.append(Section(" > ".join(text for _, text in headings)))
            continue
        # A block inside another block (a paragraph in a list item) is read with its parent.
        if element.find_parent(_HTML_BLOCKS) is not None:
            continue
        if element.name == "pre":
            block = element.get_text().strip("\n")
        elif element.name == "table":
            rows = [
                " | ".join(cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"]))
                for row in element.find_all("tr")
            ]
            block = "\n".join(row for row in rows if row.strip(" |"))
        else:
            block = _SPACE_BEFORE_PUNCTUATION.sub(r"\1", " ".join(element.get_text(" ").split()))
            if element.name == "li":
                block = f"- {block}"
        if block:
            sections[-1].blocks.append(block)
    if not any(section.blocks for section in sections):
        # Pages without block markup: their text, in paragraphs.
        sections = [Section("", _paragraphs(root.get_text("\n")))]
    return Document(source, title or _default_title(source), [s for s in sections if s.blocks])


def _pdf(source: str, data: bytes) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise UnreadableDocument("the PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
        title = str(reader.metadata.title or "").strip() if reader.metadata else ""
    except PdfReadError as error:
        raise UnreadableDocument(f"not a readable PDF: {error}") from None
    sections = [
        Section(f"page {number}", _paragraphs(text))
        for number, text in enumerate(pages, start=1)
        if text.strip()
    ]
    return Document(source, title or _default_title(source), sections)
