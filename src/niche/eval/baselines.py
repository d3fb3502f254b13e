"""The classic baselines a user would try first on a label task, fitted on the specialist's own training rows.

- `tfidf+logreg`: TF-IDF of word 1-2-grams and character 2-5-grams (within word boundaries, sublinear term
  frequency) and a multinomial logistic regression (scikit-learn).
- `embeddings+logreg`: all-MiniLM-L6-v2 sentence embeddings (the packaged model, offline) and a logistic
  regression.

Each gets its best configuration within a small search a careful user would run: the regularisation strength C
is chosen on the specialist's validation rows (never the test rows), each candidate fitted on the training rows
only, and the best kept. Fit time counts the whole search, the embedding of the training rows included.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from niche.data.examples import Example
from niche.data.tasks import label_of
from niche.embed import load_embedder
from niche.errors import require_extra
from niche.metrics import label_metrics

# Inverse regularisation strengths tried for each baseline; the best on the validation rows is kept.
C_GRID = (1.0, 10.0, 100.0)
BASELINES = ("tfidf+logreg", "embeddings+logreg")


@dataclass
class BaselineScore:
    name: str
    metrics: dict[str, Any]
    fit_seconds: float
    examples_per_s: float  # batched prediction
    latency_p50_ms: float  # one request at a time
    latency_p95_ms: float
    settings: dict[str, Any]
    predictions: list[str] = field(default_factory=list, repr=False)

    def cost_per_thousand_requests(self, price_per_hour: float) -> float:
        return price_per_hour / 3600 / self.examples_per_s * 1000 if self.examples_per_s else float("inf")


@dataclass
class FittedBaseline:
    name: str
    predict: Callable[[Sequence[str]], list[str]]
    fit_seconds: float
    settings: dict[str, Any]


def tfidf_features() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_union

    return make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
    )


def best_logistic_regression(
    train_features: Any, train_labels: list[str], validation_features: Any, validation_labels: list[str], seed: int
) -> tuple[Any, float, dict[str, float]]:
    """The C with the best validation accuracy (the smaller C on ties), its fitted model, and every C's score."""
    from sklearn.linear_model import LogisticRegression

    scores: dict[str, float] = {}
    best: tuple[float, float, Any] | None = None
    for strength in C_GRID:
        model = LogisticRegression(C=strength, max_iter=3000, random_state=seed).fit(train_features, train_labels)
        accuracy = float(np.mean(model.predict(validation_features) == np.asarray(validation_labels)))
        scores[str(strength)] = accuracy
        if best is None or accuracy > best[0]:
            best = (accuracy, strength, model)
    assert best is not None
    return best[2], best[1], scores


def fit_tfidf(train: Sequence[Example], validation: Sequence[Example], seed: int = 0) -> FittedBaseline:
    started = time.perf_counter()
    features = tfidf_features()
    train_matrix = features.fit_transform([example.input_text for example in train])
    validation_matrix = features.transform([example.input_text for example in validation])
    model, strength, scores = best_logistic_regression(
        train_matrix, [label_of(e) for e in train], validation_matrix, [label_of(e) for e in validation], seed
    )

    def predict(texts: Sequence[str]) -> list[str]:
        return [str(label) for label in model.predict(features.transform(list(texts)))]

    settings = {"features": "word 1-2-grams + char_wb 2-5-grams, TF-IDF", "C": strength, "validation_accuracy": scores}
    return FittedBaseline("tfidf+logreg", predict, time.perf_counter() - started, settings)


def fit_embeddings(
    train: Sequence[Example], validation: Sequence[Example], seed: int = 0, embedder: Any | None = None
) -> FittedBaseline:
    started = time.perf_counter()
    model_embedder = embedder or load_embedder()

    def embed(texts: Sequence[str]) -> np.ndarray:
        return np.asarray(
            model_embedder.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        )

    train_matrix = embed([example.input_text for example in train])
    validation_matrix = embed([example.input_text for example in validation])
    model, strength, scores = best_logistic_regression(
        train_matrix, [label_of(e) for e in train], validation_matrix, [label_of(e) for e in validation], seed
    )

    def predict(texts: Sequence[str]) -> list[str]:
        return [str(label) for label in model.predict(embed(texts))]

    settings = {"features": "all-MiniLM-L6-v2, normalised", "C": strength, "validation_accuracy": scores}
    return FittedBaseline("embeddings+logreg", predict, time.perf_counter() - started, settings)


FITTERS: dict[str, Callable[..., FittedBaseline]] = {"tfidf+logreg": fit_tfidf, "embeddings+logreg": fit_embeddings}


def score_baseline(
    fitted: FittedBaseline,
    test: Sequence[Example],
    references: Sequence[str],
    labels: Sequence[str] | None,
    latency_requests: int = 16,
    scorer: Callable[..., dict[str, Any]] = label_metrics,
) -> BaselineScore:
    """The task's metrics on the test rows (accuracy and the other label metrics unless `scorer` says otherwise),
    batched throughput and one-at-a-time latency."""
    texts = [example.input_text for example in test]
    started = time.perf_counter()
    predictions = fitted.predict(texts)
    seconds = time.perf_counter() - started
    latencies = []
    for text in texts[:latency_requests]:
        single = time.perf_counter()
        fitted.predict([text])
        latencies.append((time.perf_counter() - single) * 1000)
    latencies.sort()
    return BaselineScore(
        name=fitted.name,
        metrics=scorer(predictions, references, labels),
        fit_seconds=fitted.fit_seconds,
        examples_per_s=len(texts) / seconds if seconds else 0.0,
        latency_p50_ms=statistics.median(latencies) if latencies else 0.0,
        latency_p95_ms=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0,
        settings=fitted.settings,
        predictions=predictions,
    )


def run_baselines(
    train: Sequence[Example],
    validation: Sequence[Example],
    test: Sequence[Example],
    references: Sequence[str],
    labels: Sequence[str] | None,
    *,
    names: Sequence[str] = BASELINES,
    seed: int = 0,
    latency_requests: int = 16,
    on_fitted: Callable[[str], None] | None = None,
) -> list[BaselineScore]:
    """Fit each named baseline on `train` (C chosen on `validation`) and score it on `test`."""
    require_extra("train", ("sklearn",), "the classic baselines")
    scores = []
    for name in names:
        fitted = FITTERS[name](train, validation, seed)
        if on_fitted:
            on_fitted(name)
        scores.append(score_baseline(fitted, test, references, labels, latency_requests))
    return scores
