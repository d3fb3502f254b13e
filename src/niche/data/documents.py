"""Domain documents as text: which files count as documents, how each is read, and how text is cut into
overlapping passages. Shared by retrieval (`niche rag`) and document-grounded synthesis (`niche synth`)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from niche.errors import ConfigError, DataError

DOCUMENT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".pdf"}


def chunk_text(text: str, size: int = 800, overlap: int = 150) -> list[str]:
    """Paragraph-aligned passages of at most `size` characters, each starting with about `overlap`
    characters of the previous one, so an answer that spans a boundary is whole in one of them."""
    if overlap >= size:
        raise ConfigError(f"chunk overlap ({overlap}) must be smaller than the chunk size ({size})")
    paragraphs = [part.strip() for part in re.split(r"\n\s*\n", text) if part.strip()]
    passages: list[str] = []
    current = ""
    for paragraph in paragraphs:
        while len(paragraph) > size:  # one paragraph longer than a passage: cut it
            passages.append(paragraph[:size])
            paragraph = paragraph[size - overlap :]
        if current and len(current) + len(paragraph) + 2 > size:
            passages.append(current)
            tail = current[-overlap:] if overlap else ""
            tail = tail[tail.find(" ") + 1 :] if " " in tail else tail  # start the overlap on a word
            current = tail if len(tail) + len(paragraph) + 2 <= size else ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    if current:
        passages.append(current)
    return passages


def read_document(path: Path) -> str:
    """Text of a .txt/.md/.rst file, or the extracted text of a PDF (pypdf)."""
    if path.suffix.lower() == ".pdf":
        try:
            from pypdf import PdfReader
        except ImportError as error:
            raise ConfigError("PDF documents need pypdf, in niche's `rag` extra: pip install 'niche[rag]'") from error
        try:
            return "\n\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)
        except Exception as error:  # noqa: BLE001 - pypdf raises many types for broken files
            raise DataError(path, f"cannot extract text from this PDF ({error})") from error
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(path, f"not UTF-8 text (byte {error.start}); expected .txt, .md, .rst or .pdf") from error


def document_paths(inputs: Sequence[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            paths += sorted(path for path in item.rglob("*") if path.suffix.lower() in DOCUMENT_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise DataError(item, "no such file or directory")
    if not paths:
        raise DataError(
            Path(inputs[0]) if inputs else Path("."), f"no documents ({', '.join(sorted(DOCUMENT_SUFFIXES))})"
        )
    return paths
