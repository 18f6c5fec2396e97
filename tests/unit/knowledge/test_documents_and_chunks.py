"""Reading documents into sections, and packing them into chunks."""

from __future__ import annotations

import pytest

from tertulia.knowledge.chunking import chunk_document, estimate_tokens
from tertulia.knowledge.documents import Document, Section, UnreadableDocument, kind_of, parse
from tertulia.knowledge.settings import collection_name
from tests.testbed.documents import minimal_pdf

pytestmark = pytest.mark.unit

MARKDOWN = """# Harbour guide

Opening words.

## Berths

Ships moor at **berth 4** from nine.

- one
- two

```python
print("# not a heading")
```

### Fees

| size | fee |
| --- | --- |
| small | 10 |

## Tides

High tide is at noon.
"""


def test_markdown_sections_follow_headings_and_keep_blocks_whole() -> None:
    document = parse("guide/harbour.md", MARKDOWN.encode(), "markdown")
    assert document.title == "Harbour guide"
    sections = {section.heading: section.blocks for section in document.sections}
    assert list(sections) == ["Harbour guide", "Berths", "Berths > Fees", "Tides"]
    assert sections["Berths"] == [
        "Ships moor at **berth 4** from nine.",
        "- one\n- two",
        '```python\nprint("# not a heading")\n```',
    ]
    assert sections["Berths > Fees"] == ["| size | fee |\n| --- | --- |\n| small | 10 |"]


def test_html_reads_headings_paragraphs_lists_and_tables_but_not_scripts() -> None:
    html = (
        "<html><head><title>Ports</title><script>var secret = 1;</script></head><body>"
        "<nav>menu</nav><h2>Hours</h2><p>Open <b>daily</b>.</p><ul><li>north<p>gate</p></li>"
        "</ul><table><tr><th>day</th><th>hours</th></tr><tr><td>Mon</td><td>9-5</td></tr>"
        "</table></body></html>"
    )
    document = parse("ports.html", html.encode(), "html")
    assert document.title == "Ports"
    assert document.sections == [
        Section("Hours", ["Open daily.", "- north gate", "day | hours\nMon | 9-5"])
    ]


def test_text_is_paragraphs_and_pdf_text_is_extracted() -> None:
    text = parse("notes/release_notes.txt", b"First.\n\nSecond\nline.\n", "text")
    assert text.title == "release notes"
    assert text.sections == [Section("", ["First.", "Second\nline."])]
    pdf = parse("a.pdf", minimal_pdf(["Cranes lift containers.", "Tugs push."], "Cargo"), "pdf")
    assert pdf.title == "Cargo"
    assert pdf.sections[0].heading == "page 1"
    assert "Cranes lift containers." in pdf.sections[0].blocks[0]


@pytest.mark.parametrize(
    ("kind", "data", "reason"),
    [
        ("markdown", b"\xff\xfe\x00broken", "not UTF-8"),
        ("pdf", b"%PDF-1.4 truncated", "not a readable PDF"),
    ],
)
def test_unreadable_documents_say_why(kind: str, data: bytes, reason: str) -> None:
    with pytest.raises(UnreadableDocument, match=reason):
        parse("bad", data, kind)


def test_kinds_by_suffix() -> None:
    from pathlib import PurePath

    assert kind_of(PurePath("a/B.MD")) == "markdown"
    assert kind_of(PurePath("x.pdf")) == "pdf"
    assert kind_of(PurePath("image.png")) is None


def _long_document(paragraphs: int = 30) -> Document:
    blocks = [
        f"Paragraph {n} says that ship {n} carries {n * 3} crates of tea. It sails at dawn."
        for n in range(paragraphs)
    ]
    return Document("long.md", "Long", [Section("A", blocks), Section("B", ["Short one."])])


def test_chunks_respect_the_budget_never_cross_headings_and_lose_nothing() -> None:
    document = _long_document()
    chunks = chunk_document(document, max_tokens=60, overlap=15)
    assert all(estimate_tokens(chunk.text) <= 60 for chunk in chunks)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    assert chunks[-1].section == "B" and chunks[-1].text == "Short one."
    joined = "\n\n".join(chunk.text for chunk in chunks if chunk.section == "A")
    for block in document.sections[0].blocks:
        assert block in joined


def test_consecutive_chunks_overlap() -> None:
    chunks = chunk_document(_long_document(), max_tokens=60, overlap=25)
    first, second = chunks[0], chunks[1]
    last_paragraph = first.text.split("\n\n")[-1]
    assert second.text.startswith(last_paragraph)


def test_a_block_over_the_budget_is_cut_at_sentences_then_words() -> None:
    sentence = "Word " * 30 + "end."
    document = Document("x.txt", "X", [Section("", [f"Short start. {sentence} Tail here."])])
    chunks = chunk_document(document, max_tokens=20, overlap=0)
    assert all(estimate_tokens(chunk.text) <= 20 for chunk in chunks)
    words = " ".join(chunk.text for chunk in chunks).split()
    assert words.count("Word") == 30 and "Tail" in words


def test_the_embedded_text_carries_title_and_section_and_hashes_differ() -> None:
    chunks = chunk_document(_long_document(), max_tokens=60, overlap=0)
    assert chunks[0].embedded_text.startswith("Long > A\n\n")
    assert len({chunk.content_hash for chunk in chunks}) == len(chunks)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(8, 0), (100, 50), (100, -1)])
def test_chunk_settings_are_checked(max_tokens: int, overlap: int) -> None:
    with pytest.raises(ValueError, match=r"max_tokens|overlap"):
        chunk_document(_long_document(), max_tokens=max_tokens, overlap=overlap)


@pytest.mark.parametrize(
    ("name", "expected"), [("help-desk", "Help_desk"), ("bot", "Bot"), ("9lives", "C9lives")]
)
def test_collection_names_are_valid_weaviate_classes(name: str, expected: str) -> None:
    assert collection_name(name) == expected
