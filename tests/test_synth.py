"""niche synth against real OpenAI-compatible servers on loopback: a scripted teacher (malformed replies,
429s, 5xx, timeouts) and niche serve itself with a tiny model."""

import asyncio
import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from conftest import LABELS, chat_completion, ticket_rows, write_jsonl
from niche.data.documents import chunk_text
from niche.data.formats import load_examples
from niche.errors import ConfigError
from niche.synth import SynthSettings, parse_items, synthesize
from niche.teachers import OpenAITeacher, make_teacher
from test_serve import running

VOCABULARY = [
    f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro", "su", "ti") for b in ("ba", "de", "fo", "gu", "hi", "jo")
]


def scripted_teacher(script: list[str], per_reply: int = 5) -> tuple[FastAPI, dict]:
    """An OpenAI-compatible chat endpoint that follows `script` call by call (then answers well)."""
    state = {"calls": 0, "prompts": []}
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        call = state["calls"]
        state["calls"] += 1
        action = script[call] if call < len(script) else "good"
        prompt = body["messages"][0]["content"]
        state["prompts"].append(prompt)
        if action == "429":
            return JSONResponse({"error": {"message": "slow down"}}, status_code=429, headers={"retry-after": "0"})
        if action == "500":
            return JSONResponse({"error": {"message": "boom"}}, status_code=500)
        if action == "slow":
            await asyncio.sleep(2)
        label_match = re.search(r'labelled "(\w+)"', prompt)
        label = label_match.group(1) if label_match else None
        rng = random.Random(call)
        if "Rate this training example" in prompt:
            score = {"judge_low": 2, "judge_garbage": None}.get(action, 5)
            content = "I cannot tell" if score is None else json.dumps({"score": score, "reason": "looks right"})
        elif action == "malformed":
            content = "Sure! Here are some great examples for you."
        elif "input/answer pairs" in prompt:
            items = [
                {
                    "input": " ".join(rng.sample(VOCABULARY, 8)),
                    "output": json.dumps({"severity": rng.choice(["low", "high"])}) if index else "not json",
                }
                for index in range(per_reply)
            ]
            content = json.dumps({"items": items})
        elif action == "seed_copy":
            seed_line = re.search(r"^- (.+)$", prompt, re.MULTILINE).group(1)
            content = json.dumps({"items": [{"text": seed_line, "label": label}]})
        elif action == "bad_label":
            content = json.dumps({"items": [{"text": " ".join(rng.sample(VOCABULARY, 9)), "label": "weather"}]})
        elif "Passage:" in prompt:
            passage = prompt.split('"""')[1].strip()
            first_words = " ".join(passage.split()[:4])
            items = [
                {
                    "question": f"what does the passage say about {' '.join(rng.sample(VOCABULARY, 6))}?",
                    "answer": first_words,
                }
                for _ in range(per_reply)
            ]
            content = "```json\n" + json.dumps({"items": items}) + "\n```"
        else:
            items = [
                {"text": f"{label} " + " ".join(rng.sample(VOCABULARY, 9)), "label": label} for _ in range(per_reply)
            ]
            content = json.dumps({"items": items})
        return chat_completion(body["model"], content, 10, 20, call)

    return app, state


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
def seeds(tmp_path) -> Path:
    return write_jsonl(tmp_path / "seeds.jsonl", ticket_rows(12))


def teacher_at(url: str, **options) -> OpenAITeacher:
    return OpenAITeacher(f"{url}/v1", "teacher", backoff_s=0.01, **options)


def test_every_row_is_validated_rejects_kept_retries_counted(tmp_path, seeds) -> None:
    app, state = scripted_teacher(["429", "good", "malformed", "500", "good", "seed_copy", "bad_label", "good"])
    out = tmp_path / "synthetic.jsonl"
    settings = SynthSettings(
        n=15, per_request=5, concurrency=1, max_rounds=5, price_input_per_million=1.0, price_output_per_million=2.0
    )
    with running(app) as url:
        report = synthesize(seeds, teacher_at(url), out, settings)
    accepted = read_jsonl(out)
    rejects = read_jsonl(out.with_name("synthetic.rejects.jsonl"))
    assert report.accepted == len(accepted) >= 15, "rounds replace rejected rows until n are accepted"
    assert Counter(reject["kind"] for reject in rejects) == {"malformed_reply": 1, "near_duplicate_seed": 1, "label": 1}
    assert report.rejected == {"malformed_reply": 1, "near_duplicate_seed": 1, "label": 1}
    assert report.retries == 2 and report.requests_failed == 0
    answered = state["calls"] - 2  # the 429 and the 500 carried no usage
    assert (report.prompt_tokens, report.completion_tokens) == (10 * answered, 20 * answered)
    assert report.cost == pytest.approx((10 * answered * 1.0 + 20 * answered * 2.0) / 1e6)
    for row in accepted:
        assert row["source"] == "synthetic" and row["teacher"].endswith("#teacher") and row["strategy"] == "variations"
        assert row["label"] in LABELS and row["seed_ids"] and row["id"]
        assert all(seed.split(":")[0].endswith("seeds.jsonl") for seed in row["seed_ids"])
    assert len({row["id"] for row in accepted}) == len(accepted)
    assert max(report.labels.values()) - min(report.labels.values()) <= 5, "labels take turns"
    assert load_examples(out).examples, "the output is valid niche input"
    assert "| accepted |" in out.with_name("synthetic.report.md").read_text()


def test_timeouts_are_retried_and_a_dead_teacher_fails_without_a_crash(tmp_path, seeds) -> None:
    app, state = scripted_teacher(["slow", "good"])
    with running(app) as url:
        report = synthesize(
            seeds, teacher_at(url, timeout_s=0.5), tmp_path / "a.jsonl", SynthSettings(n=5, concurrency=1)
        )
    assert report.retries == 1 and report.accepted == 5
    dead = teacher_at("http://127.0.0.1:9", max_retries=1)
    report = synthesize(seeds, dead, tmp_path / "b.jsonl", SynthSettings(n=5, concurrency=2, max_rounds=1))
    assert report.requests_failed == 1 and report.accepted == 0 and "failed after 1 retries" in report.errors[0]
    assert json.loads((tmp_path / "b.report.json").read_text())["requests_failed"] == 1


def test_an_interrupted_run_resumes_without_duplicates(tmp_path, seeds) -> None:
    app, _ = scripted_teacher([])
    out = tmp_path / "synthetic.jsonl"
    settings = SynthSettings(n=30, per_request=5, concurrency=1)

    def interrupt(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with running(app) as url:
        with pytest.raises(KeyboardInterrupt):
            synthesize(seeds, teacher_at(url), out, settings, on_request=interrupt)
        first = read_jsonl(out)
        with out.open("a") as handle:
            handle.write('{"id": "torn", "text": "half a li')  # a crash mid-write
        report = synthesize(seeds, teacher_at(url), out, settings)
    rows = read_jsonl(out)
    assert report.resumed_requests == 2 and len(first) == 10
    assert len(rows) == report.accepted == 30 and len({row["id"] for row in rows}) == 30
    assert rows[:10] == first, "finished requests are kept as they were"


def test_documents_strategy_writes_questions_with_their_passage(tmp_path) -> None:
    document = tmp_path / "runbook.md"
    document.write_text(
        "\n\n".join(f"Paragraph {index}: rotate the keys of service {index} every 90 days." for index in range(30))
    )
    app, _ = scripted_teacher([], per_reply=3)
    out = tmp_path / "qa.jsonl"
    with running(app) as url:
        report = synthesize(
            None,
            teacher_at(url),
            out,
            SynthSettings(n=6, per_request=3, strategy="documents", passage_chars=400),
            documents=[document],
        )
    rows = read_jsonl(out)
    assert report.accepted == 6 and all(row["context"] in document.read_text() for row in rows)
    examples = load_examples(out).examples
    # requests run concurrently, so rows arrive in any order: each answer must come from its own passage
    assert all(example.context.split()[:4] == example.response.split() for example in examples)
    passages = chunk_text(document.read_text(), 400)
    assert all(len(passage) <= 400 for passage in passages) and len(passages) > 3


def test_synth_against_niche_serve_with_a_tiny_model(tmp_path, seeds, tiny_base) -> None:
    from niche.config import load_config
    from niche.serve.app import create_app
    from niche.serve.torch_engine import TorchEngine
    from niche.train import train

    config = load_config(
        None,
        [
            f"base={tiny_base}",
            f"output_dir={tmp_path / 'specialists'}",
            "name=toy",
            f"data.train={seeds}",
            "training.max_steps=2",
            "training.eval_every=2",
        ],
    )
    train(config, show_progress=False)
    engine = TorchEngine(tmp_path / "specialists")
    out = tmp_path / "synthetic.jsonl"
    settings = SynthSettings(n=4, per_request=2, concurrency=2, max_chars=40, max_tokens=200, max_rounds=1)
    try:
        with running(create_app(engine)) as url:
            report = synthesize(seeds, OpenAITeacher(f"{url}/v1", "base"), out, settings)
    finally:
        engine.close()
    rejects = read_jsonl(out.with_name("synthetic.rejects.jsonl"))
    assert report.requests_failed == 0 and report.generated == report.accepted + len(rejects) > 0
    assert report.completion_tokens > 0
    assert "malformed_reply" not in report.rejected, "the schema-constrained reply always parses"
    for row in read_jsonl(out):
        assert row["label"] in LABELS and 3 <= len(row["text"].strip()) <= 40


def test_parse_items_and_bad_settings() -> None:
    assert parse_items('```json\n{"items": [{"text": "a"}]}\n```') == [{"text": "a"}]
    assert parse_items('{"text": "a"}\n{"text": "b"},\nnoise') == [{"text": "a"}, {"text": "b"}]
    with pytest.raises(ValueError):
        parse_items("no json here")
    with pytest.raises(ValidationError, match="strategy"):
        SynthSettings(strategy="magic")
    with pytest.raises(ConfigError, match="teacher-model"):
        make_teacher("http://127.0.0.1:1/v1", None)
    with pytest.raises(ConfigError, match="base URL or local"):
        make_teacher("ftp://nowhere", "m")


def test_judge_scores_gate_rows_and_malformed_verdicts_reject(tmp_path, seeds) -> None:
    # Calls: a generation reply, then one judge call per row that passed validation.
    app, _ = scripted_teacher(["good", "judge_low", "judge_garbage", "good", "good", "good"], per_reply=5)
    out = tmp_path / "judged.jsonl"
    with running(app) as url:
        report = synthesize(
            seeds, teacher_at(url), out, SynthSettings(n=5, per_request=5, concurrency=1, judge=True, max_rounds=1)
        )
    rows = read_jsonl(out)
    judged_out = [reject for reject in read_jsonl(out.with_name("judged.rejects.jsonl")) if reject["kind"] == "judge"]
    assert len(rows) == 3 and all(row["judge_score"] == 5 for row in rows)
    assert sorted(reject["reason"].split(":")[0] for reject in judged_out) == ["score 2 < 4", "score None < 4"]
    assert report.prompt_tokens == 10 * 6, "judge calls are counted"


def test_output_schema_and_malformed_seed_rows(tmp_path) -> None:
    seeds = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": f"finding {index} " + " ".join(VOCABULARY[index : index + 5]), "completion": '{"severity": "low"}'}
        for index in range(6)
    ]
    write_jsonl(seeds, rows)
    with seeds.open("a") as handle:
        handle.write("{not json\n")
    schema = {"type": "object", "properties": {"severity": {"enum": ["low", "high"]}}, "required": ["severity"]}
    app, _ = scripted_teacher([], per_reply=4)
    out = tmp_path / "pairs-out.jsonl"
    with running(app) as url:
        report = synthesize(
            seeds,
            teacher_at(url),
            out,
            SynthSettings(n=3, per_request=4, concurrency=1, output_schema=schema, max_rounds=1),
        )
    rejects = read_jsonl(out.with_name("pairs-out.rejects.jsonl"))
    assert report.seed_problems == 1 and rejects[0]["source"] == f"{seeds}:7" and rejects[0]["kind"] == "bad_seed"
    assert [reject["kind"] for reject in rejects[1:]] == ["schema"]
    with running(app) as url:  # a rerun reports the bad seed row again, once
        synthesize(seeds, teacher_at(url), out, SynthSettings(n=3, per_request=4, output_schema=schema, max_rounds=1))
    kinds = [reject["kind"] for reject in read_jsonl(out.with_name("pairs-out.rejects.jsonl"))]
    assert sorted(kinds) == ["bad_seed", "schema"]
    assert report.accepted == 3 and all(
        json.loads(row["completion"])["severity"] in {"low", "high"} for row in read_jsonl(out)
    )


def test_a_local_teacher_runs_in_process(tmp_path, seeds, tiny_base) -> None:
    teacher = make_teacher(f"local:{tiny_base}", None)
    report = synthesize(
        seeds, teacher, tmp_path / "local.jsonl", SynthSettings(n=2, per_request=2, max_tokens=12, max_rounds=1)
    )
    assert teacher.name == f"local:{tiny_base}" and report.completion_tokens > 0
    assert report.generated == report.accepted + sum(report.rejected.values()) >= 1, (
        "a random model's reply is judged, not trusted"
    )


def test_cli_synth(tmp_path, seeds) -> None:
    from typer.testing import CliRunner

    from niche.cli import app as cli

    app, _ = scripted_teacher([])
    out = tmp_path / "cli.jsonl"
    with running(app) as url:
        result = CliRunner().invoke(
            cli,
            [
                "synth",
                "--seeds",
                str(seeds),
                "--teacher",
                f"{url}/v1",
                "--teacher-model",
                "t",
                "--n",
                "4",
                "--out",
                str(out),
            ],
        )
    assert result.exit_code == 0, result.output
    assert "accepted" in result.output and len(read_jsonl(out)) >= 4
