"""Chunks: the blocks of each section packed up to a token budget, with overlap.

A chunk never crosses a heading. A block over the budget is cut at sentences, then at words.
The next chunk of a section starts with the last sentences of the one before, up to the
overlap, so a passage that falls across a boundary is still found whole in one of them.
Tokens are estimated from words and punctuation, close to a WordPiece count for English.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from tertulia.knowledge.documents import Document

_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[`*])|\n+")


def estimate_tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


@dataclass(frozen=True)
class Chunk:
    source: str
    title: str
    section: str
    index: int
    text: str

    @property
    def embedded_text(self) -> str:
        """What is embedded: the text with its title and section, which carry its topic."""
        heading = " > ".join(part for part in (self.title, self.section) if part)
        return f"{heading}\n\n{self.text}" if heading else self.text

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.embedded_text.encode()).hexdigest()


def _pieces(block: str, budget: int) -> list[tuple[str, str]]:
    """The block whole when it fits; else its lines and sentences, and the words of one too
    long: each with the separator that joins it to the piece before."""
    if estimate_tokens(block) <= budget:
        return [(block, "\n\n")]
    pieces: list[tuple[str, str]] = []
    separator = "\n\n"
    position = 0
    for match in [*_SENTENCE_END.finditer(block), None]:
        end = match.start() if match else len(block)
        sentence = block[position:end].strip()
        if sentence:
            if estimate_tokens(sentence) <= budget:
                pieces.append((sentence, separator))
            else:
                words: list[str] = []
                for word in sentence.split():
                    if words and estimate_tokens(" ".join([*words, word])) > budget:
                        pieces.append((" ".join(words), separator))
                        words, separator = [], " "
                    words.append(word)
                if words:
                    pieces.append((" ".join(words), separator))
        if match:
            separator = "\n" if "\n" in match.group() else " "
            position = match.end()
    return pieces


def chunk_document(document: Document, max_tokens: int = 200, overlap: int = 40) -> list[Chunk]:
    if max_tokens < 16:
        raise ValueError("max_tokens must be at least 16")
    if not 0 <= overlap < max_tokens // 2:
        raise ValueError("overlap must be at least 0 and under half of max_tokens")
    chunks: list[Chunk] = []
    for section in document.sections:
        # A separator per piece: blocks are joined by blank lines, sentences by spaces.
        pieces: list[tuple[str, str]] = []
        for block in section.blocks:
            pieces.extend(_pieces(block, max_tokens))
        current: list[tuple[str, str]] = []
        size = 0
        fresh = 0  # pieces in `current` not carried over from the chunk before
        for piece, separator in pieces:
            cost = estimate_tokens(piece)
            if current and size + cost > max_tokens:
                chunks.append(_chunk(document, section.heading, len(chunks), current))
                carried: list[tuple[str, str]] = []
                carried_size = 0
                for previous in reversed(current):
                    previous_cost = estimate_tokens(previous[0])
                    if carried_size + previous_cost > overlap or previous_cost + cost > max_tokens:
                        break
                    carried.insert(0, previous)
                    carried_size += previous_cost
                current, size, fresh = carried, carried_size, 0
            current.append((piece, separator))
            size += cost
            fresh += 1
        if current and fresh:
            chunks.append(_chunk(document, section.heading, len(chunks), current))
    return chunks


def _chunk(document: Document, section: str, index: int, pieces: list[tuple[str, str]]) -> Chunk:
    text = pieces[0][0]
    for piece, separator in pieces[1:]:
        text += separator + piece
    return Chunk(document.source, document.title, section, index, text)
