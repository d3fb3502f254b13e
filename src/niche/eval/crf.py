"""The classic extraction baseline a user would try first on a JSON task, fitted on the specialist's own rows.

What a practitioner built before language models: a linear-chain CRF (python-crfsuite through sklearn-crfsuite)
over BIO tags of the words, for the fields whose values are spans of the input, with word, shape, affix and
neighbour features; and TF-IDF + logistic regression (`niche.eval.baselines`) for each closed-set field. The
spans and choices are put together into the same JSON as the specialist's answers (`niche.data.spans.assemble`)
and scored by the same per-field metrics. Fields that are neither copied nor a closed set are out of its reach:
it never answers them, and they are listed in its settings.

Each part gets the search a careful user would run, on the specialist's validation rows (never the test rows):
the CRF's L1 and L2 penalties by span F1 of the copied fields, the regression's C by accuracy. The penalties are
searched one at a time over one value per decade from 1e-3 to 10 (the L2 penalty with the L1 at 0.1, then the L1 at
the chosen L2), each grown past an end of its grid while the best sits there (`niche.eval.baselines.search_log_grid`),
so each chosen penalty is interior unless the limit was reached (`c1_interior`, `c2_interior` in the settings). The
fit time counts the whole search.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from niche.data.examples import Example, parse_json_object
from niche.data.spans import (
    ExtractionPlan,
    Span,
    answer_values,
    assemble,
    bio_tags,
    extraction_plan,
    place_values,
    spans_from_tags,
    words_with_offsets,
)
from niche.errors import ConfigError, require_extra
from niche.eval.baselines import (
    BaselineScore,
    FittedBaseline,
    best_logistic_regression,
    regularisation_settings,
    rows_fitted,
    score_baseline,
    search_log_grid,
    tfidf_features,
)
from niche.metrics import json_metrics

# The CRF's L1 (c1) and L2 (c2) penalties tried first, one per decade (powers of ten: 1e-3 to 10), each searched with
# the other fixed: c2 with c1 at CRF_FIRST_C1, then c1 at the chosen c2.
CRF_DECADES = range(-3, 2)
CRF_EXTRA_DECADES = 2
CRF_FIRST_C1 = 0.1
CRF_MAX_ITERATIONS = 100
ABSENT = ""  # the class of a closed-set field an answer leaves out


def word_features(words: Sequence[str], index: int) -> dict[str, Any]:
    """The classic CRF features of one word: itself, its shape and affixes, and the same of its neighbours."""
    features: dict[str, Any] = {"bias": 1.0}
    for offset in (-2, -1, 0, 1, 2):
        position = index + offset
        if not 0 <= position < len(words):
            features[f"{offset}:edge"] = True
            continue
        word = words[position]
        features |= {
            f"{offset}:lower": word.lower(),
            f"{offset}:shape": _shape(word),
            f"{offset}:title": word.istitle(),
            f"{offset}:digit": word.isdigit(),
        }
        if offset == 0 or abs(offset) == 1:
            features |= {f"{offset}:suffix3": word[-3:].lower(), f"{offset}:prefix3": word[:3].lower()}
        if offset == 0:
            features |= {"0:suffix2": word[-2:].lower(), "0:prefix2": word[:2].lower(), "0:upper": word.isupper()}
    return features


def _shape(word: str) -> str:
    """Aa, a, 0, . with runs collapsed: `Paris` -> Aa, `5pm` -> 0a, `12:30` -> 0.0."""
    classes = ["A" if c.isupper() else "a" if c.isalpha() else "0" if c.isdigit() else "." for c in word]
    return "".join(c for i, c in enumerate(classes) if i == 0 or c != classes[i - 1])


def _sequence(text: str) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
    pieces = words_with_offsets(text)
    words = [word for word, _, _ in pieces]
    return [word_features(words, index) for index in range(len(words))], [(start, end) for _, start, end in pieces]


def _tagged_rows(examples: Sequence[Example], plan: ExtractionPlan) -> tuple[list[Any], list[list[str]]]:
    features, tags = [], []
    for example in examples:
        answer = parse_json_object(example.response) or {}
        values, _ = answer_values(answer, plan)
        spans, _ = place_values(example.input_text, values)
        row_features, offsets = _sequence(example.input_text)
        features.append(row_features)
        tags.append(bio_tags(offsets, spans))
    return features, tags


def _span_f1(predicted: list[list[str]], gold: list[list[str]]) -> float:
    """Micro F1 of (row, field, start, end) spans read from the tags."""
    found, expected = set(), set()
    for row, (tags, reference) in enumerate(zip(predicted, gold)):
        offsets = [(index, index + 1) for index in range(len(tags))]
        found |= {(row, span.field, span.start, span.end) for span in spans_from_tags(tags, offsets)}
        expected |= {(row, span.field, span.start, span.end) for span in spans_from_tags(reference, offsets)}
    hits = len(found & expected)
    return 2 * hits / (len(found) + len(expected)) if found or expected else 1.0


def fit_crf(
    train: Sequence[Example], validation: Sequence[Example], plan: ExtractionPlan
) -> tuple[Any, dict[str, Any]]:
    """The CRF with the best (c1, c2) on the validation rows, and every pair's span F1 there.

    One penalty at a time (`search_log_grid`, ties to the larger penalty): c2 with c1 at CRF_FIRST_C1, then c1
    with the chosen c2; a pair already fitted is not fitted again."""
    import sklearn_crfsuite

    train_features, train_tags = _tagged_rows(train, plan)
    validation_features, validation_tags = _tagged_rows(validation, plan)
    fitted: dict[tuple[float, float], tuple[float, Any]] = {}

    def fit_pair(c1: float, c2: float) -> tuple[float, Any]:
        if (c1, c2) not in fitted:
            model = sklearn_crfsuite.CRF(
                algorithm="lbfgs", c1=c1, c2=c2, max_iterations=CRF_MAX_ITERATIONS, all_possible_transitions=True
            )
            model.fit(train_features, train_tags)
            fitted[(c1, c2)] = (_span_f1(model.predict(validation_features), validation_tags), model)
        return fitted[(c1, c2)]

    _, l2 = search_log_grid(lambda c2: fit_pair(CRF_FIRST_C1, c2), CRF_DECADES, CRF_EXTRA_DECADES, ties_to_larger=True)
    model, l1 = search_log_grid(lambda c1: fit_pair(c1, l2.chosen), CRF_DECADES, CRF_EXTRA_DECADES, ties_to_larger=True)
    return model, {
        "c1": l1.chosen,
        "c2": l2.chosen,
        "c1_interior": l1.interior,
        "c2_interior": l2.interior,
        "validation_span_f1": {f"c1={c1:g},c2={c2:g}": round(score, 4) for (c1, c2), (score, _) in fitted.items()},
    }


def fit_choices(
    train: Sequence[Example], validation: Sequence[Example], plan: ExtractionPlan, seed: int = 0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A TF-IDF + logistic regression per closed-set field (a field with one value seen needs no model)."""
    models: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    train_answers = [answer_values(parse_json_object(e.response) or {}, plan)[1] for e in train]
    validation_answers = [answer_values(parse_json_object(e.response) or {}, plan)[1] for e in validation]
    for field in plan.choices:
        labels = [answer[field.name] or ABSENT for answer in train_answers]
        if len(set(labels)) == 1:
            models[field.name] = labels[0]
            continue
        features = tfidf_features()
        train_matrix = features.fit_transform([example.input_text for example in train])
        validation_matrix = features.transform([example.input_text for example in validation])
        references = [answer[field.name] or ABSENT for answer in validation_answers]
        model, search = best_logistic_regression(train_matrix, labels, validation_matrix, references, seed)
        models[field.name] = (features, model)
        settings[field.name] = regularisation_settings(search)
    return models, settings


def _predict_choices(models: dict[str, Any], texts: Sequence[str]) -> list[dict[str, str | None]]:
    answers: list[dict[str, str | None]] = [{} for _ in texts]
    for name, fitted in models.items():
        if isinstance(fitted, str):
            values = [fitted] * len(texts)
        else:
            features, model = fitted
            values = [str(value) for value in model.predict(features.transform(list(texts)))]
        for answer, value in zip(answers, values):
            answer[name] = value or None
    return answers


def fit_crf_extractor(
    train: Sequence[Example], validation: Sequence[Example], plan: ExtractionPlan, seed: int = 0
) -> FittedBaseline:
    """The CRF for the copied fields and the regressions for the closed sets, as one baseline answering JSON."""
    started = time.perf_counter()
    crf, crf_settings = fit_crf(train, validation, plan) if plan.spans else (None, {})
    choices, choice_settings = fit_choices(train, validation, plan, seed)

    def predict(texts: Sequence[str]) -> list[str]:
        sequences = [_sequence(text) for text in texts]
        tags = crf.predict([features for features, _ in sequences]) if crf is not None else [[] for _ in texts]
        chosen = _predict_choices(choices, texts)
        answers = []
        for text, (_, offsets), row_tags, row_choices in zip(texts, sequences, tags, chosen):
            spans: list[Span] = spans_from_tags(row_tags, offsets)
            answers.append(json.dumps(assemble(plan, text, spans, row_choices), ensure_ascii=False))
        return answers

    settings = {
        "features": "CRF over BIO word tags (word, shape, affixes, 2 neighbours each side); TF-IDF + logistic "
        "regression for closed-set fields",
        **rows_fitted(train, validation),
        "crf": crf_settings,
        "choices": choice_settings,
        "copied_fields": [field.name for field in plan.spans],
        "choice_fields": [field.name for field in plan.choices],
        "out_of_reach": plan.unsupported,
    }
    return FittedBaseline("crf+logreg", predict, time.perf_counter() - started, settings)


def run_crf_baseline(
    train: Sequence[Example],
    validation: Sequence[Example],
    test: Sequence[Example],
    references: Sequence[str],
    schema: dict[str, Any],
    *,
    seed: int = 0,
    latency_requests: int = 16,
) -> BaselineScore:
    """Fit the CRF baseline on `train` (its settings chosen on `validation`) and score it on `test` as eval scores
    a JSON specialist."""
    require_extra("train", ("sklearn", "sklearn_crfsuite"), "the classic extraction baseline")
    plan = extraction_plan(schema)
    if not plan.fields:
        raise ConfigError(
            "the classic extraction baseline answers fields copied from the input or from a closed set, and this "
            f"schema has none ({'; '.join(f'{name}: {why}' for name, why in plan.unsupported.items())})"
        )
    fitted = fit_crf_extractor(train, validation, plan, seed)

    def scorer(predictions: Sequence[str], expected: Sequence[str], labels: Sequence[str] | None) -> dict[str, Any]:
        return json_metrics(predictions, expected, schema=schema)

    return score_baseline(fitted, test, references, None, latency_requests, scorer=scorer)
