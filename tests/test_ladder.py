"""Retrieval (sqlite-vec + FTS5), forgetting probes and the decision ladder on tiny models."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from conftest import LABELS, ticket_rows, write_jsonl
from niche.config import load_config
from niche.data.documents import chunk_text
from niche.errors import ConfigError, DataError
from niche.ladder import Rung, recommend, run_ladder, write_ladder_report
from niche.probes import Question, everyday_questions, multiple_choice_accuracy, perplexity, read_questions
from niche.rag import RagIndex, retrieval_metrics

HANDBOOK = {
    "billing.md": "# billing\n\nInvoices, refunds, double charges and payment cards belong to the billing queue.",
    "outage.md": "# outage\n\nDowntime, failing health checks and a site that is down belong to the outage queue.",
    "security.txt": "security\n\nPhishing emails, leaked passwords and suspicious logins belong to the security queue.",
}


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose only content is `text` (enough for pypdf's text extraction)."""
    stream = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    body, offsets = b"%PDF-1.4\n", []
    for number, content in enumerate(objects, start=1):
        offsets.append(len(body))
        body += f"{number} 0 obj\n".encode() + content + b"\nendobj\n"
    xref = len(body)
    body += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    body += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    return body + f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


@pytest.fixture(scope="module")
def handbook(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("handbook")
    for name, text in HANDBOOK.items():
        (directory / name).write_text(text)
    (directory / "runbook.pdf").write_bytes(minimal_pdf("Rotate the database password every ninety days"))
    return directory


@pytest.fixture(scope="module")
def index(handbook, tmp_path_factory) -> RagIndex:
    return RagIndex.build([handbook], tmp_path_factory.mktemp("index") / "index", chunk_size=200, overlap=40)


def test_chunks_respect_the_size_and_overlap() -> None:
    text = "\n\n".join(f"paragraph {number} " + "word " * 30 for number in range(10))
    chunks = chunk_text(text, 300, 60)
    assert len(chunks) > 3 and all(len(chunk) <= 300 for chunk in chunks)
    for previous, following in zip(chunks, chunks[1:]):
        shared = following.split("\n\n")[0]
        assert previous.endswith(shared) and 0 < len(shared) <= 60 and not shared.startswith(" ")
    with pytest.raises(ConfigError, match="overlap"):
        chunk_text(text, 100, 100)


def test_index_searches_by_vector_keyword_and_both(index) -> None:
    assert index.meta["chunks"] == 4 and (index.directory / "index.sqlite").is_file()
    for mode in ("vector", "bm25", "hybrid"):
        assert Path(index.search("my card was charged twice for one invoice", 1, mode)[0].chunk.source).name.startswith(
            "billing.md"
        ), mode
    assert index.search("rotate the database password", 1)[0].chunk.source.endswith("runbook.pdf#0"), "PDF text"
    assert index.search("phishing", 2, "bm25")[0].chunk.source.split("/")[-1] == "security.txt#0"
    reopened = RagIndex.open(index.directory, index.embedder)
    assert [hit.chunk.chunk_id for hit in reopened.search("site down", 3)] == [
        hit.chunk.chunk_id for hit in index.search("site down", 3)
    ]


def test_retrieval_metrics_recall_and_mrr(index) -> None:
    hits = index.search_many(["site is down", "refund my invoice", "unrelated words entirely"], k=2, mode="vector")
    ranks = {hit.chunk.source.rsplit("/", 1)[-1]: position for position, hit in enumerate(hits[2])}
    metrics = retrieval_metrics(hits, ["outage.md", "billing.md", "billing.md"], k=2)
    third = 1 / (ranks["billing.md#0"] + 1) if "billing.md#0" in ranks else 0
    assert metrics["recall@2"] == pytest.approx((2 + (third > 0)) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 + third) / 3)


def test_bad_documents_are_clear_errors(tmp_path) -> None:
    with pytest.raises(DataError, match="no such file"):
        RagIndex.build([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="binary.txt: not UTF-8"):
        RagIndex.build([tmp_path / "binary.txt"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="not a niche retrieval index"):
        RagIndex.open(tmp_path)


def test_everyday_questions_and_user_sets(tmp_path) -> None:
    questions = everyday_questions()
    assert len(questions) >= 200 and len({question.question for question in questions}) == len(questions)
    assert all(len(set(question.choices)) == 4 and 0 <= question.answer < 4 for question in questions)
    path = tmp_path / "mc.jsonl"
    path.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": "4"}\n{"question": "x", "choices": ["a"]}\n')
    with pytest.raises(DataError, match="mc.jsonl:2"):
        read_questions(path)
    path.write_text('{"question": "2+2?", "choices": ["3", "4"], "answer": "4"}\n')
    assert read_questions(path) == [Question("2+2?", ("3", "4"), 1)]


def test_probes_match_a_direct_computation(tiny_base, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    texts = ["the cat sat on the mat", "a short line", "general text about rivers and mountains in spring"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer(text)["input_ids"]])
            nll += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    assert perplexity(model, tokenizer, texts, batch_size=2) == pytest.approx(math.exp(nll / count), rel=1e-4)

    questions = everyday_questions()[:12]
    expected = 0
    with torch.no_grad():
        for question in questions:
            prompt = tokenizer(f"Question: {question.question}\nAnswer:")["input_ids"]
            scores = []
            for choice in question.choices:
                ids = prompt + tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
                log_probs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
                scores.append(
                    float(torch.stack([log_probs[i - 1, ids[i]] for i in range(len(prompt), len(ids))]).mean())
                )
            expected += max(range(len(scores)), key=scores.__getitem__) == question.answer
    assert multiple_choice_accuracy(model, tokenizer, questions, batch_size=5) == pytest.approx(
        expected / len(questions)
    )


def _rung(name: str, headline: float, cost: float) -> Rung:
    return Rung(name, {}, headline, 1, 1, 10, 1, 1, cost, cost)


def test_recommend_picks_the_cheapest_rung_that_meets_the_target() -> None:
    rungs = [
        _rung("base", 0.5, 1),
        _rung("base+rag", 0.91, 5),
        _rung("specialist", 0.95, 2),
        _rung("specialist+rag", 0.97, 9),
    ]
    assert recommend(rungs, 0.9)[0] == "specialist"
    assert recommend(rungs, 0.96)[0] == "specialist+rag"
    name, reason = recommend(rungs, 0.99)
    assert name == "specialist+rag" and "no rung reaches" in reason


def test_ladder_runs_every_rung_and_writes_the_report(tmp_path, tiny_base, handbook) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", ticket_rows(24))
    test_rows = [dict(row, passage=f"{row['label']}.md") for row in ticket_rows(9, offset=40)]
    test = write_jsonl(
        tmp_path / "test.jsonl",
        [{**row, "passage": "security.txt" if row["label"] == "security" else row["passage"]} for row in test_rows],
    )
    # General-domain text for the perplexity probe, one passage per line, written here (no outside data).
    general = tmp_path / "general.txt"
    general.write_text(
        "\n".join(
            f"The {town} library opens at {hour} in the morning and closes at {hour + 9} in the evening."
            for town in ("old", "river", "hill", "market", "harbour", "north")
            for hour in (7, 8, 9, 10)
        )
        + "\n"
    )
    config = load_config(
        None,
        [
            f"base={tiny_base}",
            f"output_dir={tmp_path / 'specialists'}",
            "name=router",
            f"data.train={train}",
            f"data.test={test}",
            "prompt.system_prompt=Route the ticket: {labels}.",
            "training.max_steps=30",
            "training.batch_size=8",
            "training.eval_every=30",
            "training.learning_rate=0.01",
            "training.objective=generate",
            f"rag.documents=[{handbook}]",
            "rag.top_k=1",
            "rag.chunk_size=200",
            "rag.overlap=40",
            "rag.relevant_field=passage",
            f"ladder.general_text={general}",
            "ladder.general_lines=24",
            "ladder.latency_requests=2",
            "ladder.target=0.8",
        ],
    )
    report = run_ladder(config, show_progress=False)
    assert [rung.name for rung in report.rungs] == [
        "base",
        "base+rag",
        "specialist",
        "specialist+rag",
        "tfidf+logreg",
        "embeddings+logreg",
    ]
    specialist, tfidf = report.rungs[2], report.rungs[4]
    assert specialist.headline == 1.0 and specialist.build_seconds > 0
    assert tfidf.headline == 1.0 and tfidf.build_seconds > 0 and tfidf.cost_per_thousand_requests > 0
    # The keyword task is one a classic baseline solves: honest advice recommends it over any language model.
    assert report.recommendation in {"tfidf+logreg", "embeddings+logreg"}
    assert "needs no language model" in report.reason
    assert report.rungs[1].prompt_tokens_per_request > report.rungs[0].prompt_tokens_per_request, "context costs tokens"
    assert report.retrieval["recall@1"] == pytest.approx(1.0) and report.retrieval["chunks"] == 4
    assert set(report.forgetting) >= {"base", "specialist", "accuracy_relative_change", "forgetting"}
    assert report.forgetting["base"]["perplexity"] > 1 and report.labels == LABELS
    assert report.forgetting["general_text_lines"] == 24
    out = write_ladder_report(report, tmp_path / "report")
    page = (out / "ladder.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 5 and "Recommendation:" in page
    assert "http" not in page.replace("http-equiv", ""), "the page is self-contained"
    assert json.loads((out / "ladder.json").read_text())["recommendation"] == report.recommendation
    assert "| specialist" in (out / "ladder.md").read_text()


class FakeModel:
    """Just what the probe callback touches: train/eval mode and a disable_adapter() context."""

    def __init__(self) -> None:
        self.training = True
        self.adapters_on = True

    def eval(self):
        self.training = False

    def train(self, mode: bool = True):
        self.training = mode

    def disable_adapter(self):
        model = self

        class Off:
            def __enter__(self):
                model.adapters_on = False

            def __exit__(self, *exc):
                model.adapters_on = True

        return Off()


@pytest.mark.parametrize("action", ["warn", "stop"])
def test_forgetting_probe_warns_or_stops_past_the_threshold(action, caplog) -> None:
    from types import SimpleNamespace

    from niche.train.forgetting import ForgettingProbeCallback

    model = FakeModel()
    readings = iter([0.80, 0.79, 0.60])  # base (adapters off), step 5: -1.25%, step 10: -25%
    seen_adapters = []

    def measure(probed):
        seen_adapters.append(probed.adapters_on)
        assert not probed.training, "the probe runs in eval mode"
        return next(readings)

    callback = ForgettingProbeCallback(measure, every=5, threshold=0.05, action=action)
    state, control = SimpleNamespace(global_step=0, log_history=[]), SimpleNamespace(should_training_stop=False)
    callback.on_train_begin(None, state, control, model=model)
    for step in range(1, 11):
        state.global_step = step
        callback.on_step_end(None, state, control, model=model)
    assert seen_adapters == [False, True, True] and model.training
    assert [entry["step"] for entry in callback.history] == [5, 10]
    assert callback.history[1]["forgetting_probe_change"] == pytest.approx(-0.25)
    assert state.log_history == callback.history
    assert control.should_training_stop == (action == "stop") and callback.stopped_at == (
        10 if action == "stop" else None
    )
    assert "25.0% below the base" in caplog.text


def test_training_mixes_replay_rows_and_logs_the_probe(tmp_path, tiny_base) -> None:
    from niche.train import train

    train_path = write_jsonl(tmp_path / "train.jsonl", ticket_rows(24))
    replay = write_jsonl(
        tmp_path / "general.jsonl",
        [{"prompt": f"name a colour number {index}", "completion": "blue"} for index in range(40)],
    )
    config = load_config(
        None,
        [
            f"base={tiny_base}",
            f"output_dir={tmp_path / 'specialists'}",
            "name=replayed",
            f"data.train={train_path}",
            f"data.replay={replay}",
            "data.replay_fraction=0.5",
            "training.max_steps=10",
            "training.eval_every=10",
            "training.forgetting_probe_every=5",
            "training.forgetting_probe_questions=8",
        ],
    )
    result = train(config, show_progress=False)
    metrics = result.manifest.metrics
    validation_rows = round(24 * config.data.validation_fraction)
    assert metrics["replay_examples"] == round((24 - validation_rows) * 0.5)
    assert metrics["train_examples"] == 24 - validation_rows + metrics["replay_examples"]
    assert [entry["step"] for entry in metrics["forgetting_probe"]] == [5, 10]
    assert 0 <= metrics["forgetting_probe_base_accuracy"] <= 1
    assert result.manifest.data["replay"].rows == metrics["replay_examples"]
    logged = json.loads((result.specialist_dir / "training_log.json").read_text())
    assert any("forgetting_probe_accuracy" in entry for entry in logged)


def test_ladder_costs_each_measured_serving_engine_at_its_own_price(tmp_path) -> None:
    from niche.errors import ConfigError
    from niche.ladder import engine_costs

    speeds = tmp_path / "edge_speed.json"
    speeds.write_text(
        json.dumps(
            {
                "rows": {
                    "llama.cpp q4_k_m merged (raw)": {
                        "ttft_p50_ms": 80.0,
                        "decode_tokens_per_s": 120.0,
                        "file_mb": 105,
                    },
                    "torch fp32 merged (raw)": {"ttft_p50_ms": 150.0, "decode_tokens_per_s": 15.0, "file_mb": 540},
                }
            }
        )
    )
    rows = {row["engine"]: row for row in engine_costs(speeds, price_per_hour=0.36)}
    # 0.36 per hour = 0.0001 per second; at 120 tokens/s a million tokens take 8333 s.
    assert rows["llama.cpp q4_k_m merged (raw)"]["cost_per_million_tokens"] == pytest.approx(0.8333, rel=1e-3)
    assert rows["torch fp32 merged (raw)"]["cost_per_million_tokens"] == pytest.approx(6.6667, rel=1e-3)
    assert engine_costs(None, 0.36) == []
    speeds.write_text("{}")
    with pytest.raises(ConfigError, match="ladder.engine_speeds"):
        engine_costs(speeds, 0.36)
