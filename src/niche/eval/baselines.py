"""The classic baselines a user would try first on a label task, fitted on the specialist's own training rows.

- `tfidf+logreg`: TF-IDF of word 1-2-grams and character 2-5-grams (within word boundaries, sublinear term
  frequency) and a multinomial logistic regression (scikit-learn).
- `embeddings+logreg`: all-MiniLM-L6-v2 sentence embeddings (the packaged model, offline) and a logistic
  regression.

Each gets its best configuration within the search a careful user would run: the regularisation strength C is
chosen on the specialist's validation rows (never the test rows), each candidate fitted on the training rows only,
and the best kept. The search (`search_log_grid`) tries one C per decade from 1e-2 to 1e4; while the best sits at
an end of what was tried, it tries the next decade beyond that end, up to three decades past the grid, so the
chosen C has a tried value on each side (`C_interior` in the settings; false only when the limit was reached, which
a benchmark must treat as a failed search). Fit time counts the whole search, the embedding of the training rows
included.
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

# Inverse regularisation strengths tried first, one per decade (as powers of ten: 1e-2 to 1e4); the best on the
# validation rows is kept, and the search goes past an end of the grid while the best sits there.
C_DECADES = range(-2, 5)
C_GRID = tuple(10.0**decade for decade in C_DECADES)
C_EXTRA_DECADES = 3
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


@dataclass
class GridSearch:
    """What a search over a log-spaced grid chose: the value, every value tried with its validation score (ascending
    keys, `%g`), and whether the value is interior (a tried value on each side of it)."""

    chosen: float
    interior: bool
    scores: dict[str, float]


def search_log_grid(
    fit: Callable[[float], tuple[float, Any]],
    decades: Sequence[int],
    extra_decades: int,
    ties_to_larger: bool = False,
) -> tuple[Any, GridSearch]:
    """The best of `fit(value) -> (validation score, fitted model)` over one value per decade, grown past an end.

    On equal scores the smaller value wins (`ties_to_larger` for penalties, whose larger value regularises more):
    the stronger regularisation. While the chosen value is the smallest or largest tried, the next decade beyond it
    is tried, at most `extra_decades` past the grid; so the choice ends interior unless that limit was reached.
    Only the chosen value's model is kept (a new value tried either becomes the choice or leaves it as it was).
    """
    scores: dict[int, float] = {}
    chosen: tuple[int, Any] | None = None

    def beats_chosen(decade: int) -> bool:
        assert chosen is not None
        if scores[decade] != scores[chosen[0]]:
            return scores[decade] > scores[chosen[0]]
        return decade > chosen[0] if ties_to_larger else decade < chosen[0]

    def try_decade(decade: int) -> None:
        nonlocal chosen
        scores[decade], model = fit(10.0**decade)
        if chosen is None or beats_chosen(decade):
            chosen = (decade, model)

    for decade in decades:
        try_decade(decade)
    assert chosen is not None
    lowest, highest = min(decades) - extra_decades, max(decades) + extra_decades
    while True:
        if chosen[0] == min(scores) and chosen[0] > lowest:
            try_decade(chosen[0] - 1)
        elif chosen[0] == max(scores) and chosen[0] < highest:
            try_decade(chosen[0] + 1)
        else:
            break
    search = GridSearch(
        chosen=10.0 ** chosen[0],
        interior=min(scores) < chosen[0] < max(scores),
        scores={f"{10.0**decade:g}": scores[decade] for decade in sorted(scores)},
    )
    return chosen[1], search


def best_logistic_regression(
    train_features: Any, train_labels: list[str], validation_features: Any, validation_labels: list[str], seed: int
) -> tuple[Any, GridSearch]:
    """The logistic regression whose C has the best validation accuracy (`search_log_grid` over `C_DECADES`)."""
    from sklearn.linear_model import LogisticRegression

    expected = np.asarray(validation_labels)

    def fit(strength: float) -> tuple[float, Any]:
        model = LogisticRegression(C=strength, max_iter=3000, random_state=seed).fit(train_features, train_labels)
        return float(np.mean(model.predict(validation_features) == expected)), model

    return search_log_grid(fit, C_DECADES, C_EXTRA_DECADES)


def rows_fitted(train: Sequence[Example], validation: Sequence[Example]) -> dict[str, int]:
    """How many rows a baseline was fitted on and chose its settings on: a benchmark checks them against niche's."""
    return {"train_rows": len(train), "validation_rows": len(validation)}


def regularisation_settings(search: GridSearch) -> dict[str, Any]:
    return {"C": search.chosen, "C_interior": search.interior, "validation_accuracy": search.scores}


def searches_at_edge(settings: dict[str, Any], where: str = "") -> list[str]:
    """The searches in a baseline's settings whose choice is not interior (`<name>_interior: false`), by path:
    `C`, `crf.c2`, `choices.intent.C`. A baseline whose list is not empty was not given its best configuration."""
    found = []
    for key, value in settings.items():
        if isinstance(value, dict):
            found += searches_at_edge(value, f"{where}{key}.")
        elif key.endswith("_interior") and value is False:
            found.append(where + key.removesuffix("_interior"))
    return found


def fit_tfidf(train: Sequence[Example], validation: Sequence[Example], seed: int = 0) -> FittedBaseline:
    started = time.perf_counter()
    features = tfidf_features()
    train_matrix = features.fit_transform([example.input_text for example in train])
    validation_matrix = features.transform([example.input_text for example in validation])
    model, search = best_logistic_regression(
        train_matrix, [label_of(e) for e in train], validation_matrix, [label_of(e) for e in validation], seed
    )

    def predict(texts: Sequence[str]) -> list[str]:
        return [str(label) for label in model.predict(features.transform(list(texts)))]

    settings = {
        "features": "word 1-2-grams + char_wb 2-5-grams, TF-IDF",
        **rows_fitted(train, validation),
        **regularisation_settings(search),
    }
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
    model, search = best_logistic_regression(
        train_matrix, [label_of(e) for e in train], validation_matrix, [label_of(e) for e in validation], seed
    )

    def predict(texts: Sequence[str]) -> list[str]:
        return [str(label) for label in model.predict(embed(texts))]

    settings = {
        "features": "all-MiniLM-L6-v2, normalised",
        **rows_fitted(train, validation),
        **regularisation_settings(search),
    }
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
