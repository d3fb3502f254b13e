"""Distillation: the KD losses against hand computations, the layer-subset student, both modes end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from conftest import chat_completion
from niche.distill import student_from_layers
from niche.errors import ConfigError
from niche.train.kd import kd_loss_sum


def test_forward_kl_equals_a_kl_computed_by_hand() -> None:
    teacher = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    student = torch.tensor([[1.0, 1.0, 0.0], [0.5, -0.5, 1.0]])
    by_hand = 0.0
    for t_row, s_row in zip(teacher.tolist(), student.tolist()):
        p = [math.exp(x) / sum(math.exp(y) for y in t_row) for x in t_row]
        q = [math.exp(x) / sum(math.exp(y) for y in s_row) for x in s_row]
        by_hand += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kd_loss_sum(student, teacher).item() == pytest.approx(by_hand, rel=1e-5)
    assert kd_loss_sum(teacher, teacher).item() == pytest.approx(0.0, abs=1e-6)
    # Temperature T divides the logits and scales the loss by T^2.
    softened = kd_loss_sum(student / 2, teacher / 2).item() * 4
    assert kd_loss_sum(student, teacher, temperature=2.0).item() == pytest.approx(softened, rel=1e-5)


def test_jsd_and_top_k_match_hand_computations() -> None:
    teacher = torch.tensor([[2.0, 0.5, -1.0, -3.0]])
    student = torch.tensor([[0.0, 1.5, 0.2, 0.1]])
    p = torch.softmax(teacher, -1)[0]
    q = torch.softmax(student, -1)[0]
    beta = 0.3
    m = beta * p + (1 - beta) * q
    by_hand = beta * (p * (p / m).log()).sum() + (1 - beta) * (q * (q / m).log()).sum()
    assert kd_loss_sum(student, teacher, kind="jsd", beta=beta).item() == pytest.approx(by_hand.item(), rel=1e-5)
    # top-k: both distributions renormalised over the teacher's two most likely tokens (indices 0 and 1).
    p2, q2 = torch.softmax(teacher[0, :2], -1), torch.softmax(student[0, :2], -1)
    assert kd_loss_sum(student, teacher, top_k=2).item() == pytest.approx((p2 * (p2 / q2).log()).sum().item(), rel=1e-5)
    with pytest.raises(ConfigError, match="0 < beta < 1"):
        kd_loss_sum(student, teacher, kind="jsd", beta=1.0)


def test_student_keeps_the_chosen_layers_and_still_generates(tiny_base, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from niche.models import resolve_base

    base = resolve_base(str(tiny_base))
    with pytest.raises(ConfigError, match="distinct indices in 0..1"):
        student_from_layers(base, [0, 5], tmp_path / "bad")
    student_dir = student_from_layers(base, [1], tmp_path / "student")
    student = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert student.config.num_hidden_layers == 1 and len(student.model.layers) == 1
    assert torch.equal(student.model.layers[0].mlp.up_proj.weight, teacher.model.layers[1].mlp.up_proj.weight)
    output = student.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert output.shape[1] == 7


def test_logit_and_sequence_distillation_train_students_from_a_teacher(tiny_config, tmp_path) -> None:
    from conftest import ticket_rows, write_jsonl
    from niche.artifact import read_manifest
    from niche.distill import distill_logits, distill_sequences
    from niche.train import train

    teacher = train(tiny_config("training.max_steps=20", "training.batch_size=8"), show_progress=False)
    student = distill_logits(
        tiny_config("name=student", "distill.kind=jsd", "distill.top_k=16", "training.max_steps=4"),
        teacher.specialist_dir,
        [0],
    )
    manifest = read_manifest(student.specialist_dir)
    assert manifest.config["distill"]["teacher"] == str(teacher.specialist_dir.resolve())
    assert manifest.template.system_prompt == read_manifest(teacher.specialist_dir).template.system_prompt
    assert (tmp_path / "out" / "student-student-base" / "niche-student.json").is_file()
    assert manifest.base.spec == str(tmp_path / "out" / "student-student-base")

    unlabeled = write_jsonl(tmp_path / "unlabeled.jsonl", [{"text": row["text"]} for row in ticket_rows(30, 500)])
    result, summary = distill_sequences(
        tiny_config("name=student-seq", "training.max_steps=2"), teacher.specialist_dir, unlabeled
    )
    assert summary["inputs"] == 30 and summary["answered"] == 30 and sum(summary["curated"].values()) <= 30
    rows = (tmp_path / "out" / ".student-seq.distill" / "teacher_rows.jsonl").read_text().splitlines()
    labels = read_manifest(teacher.specialist_dir).task.labels
    answered = [json.loads(row)["label"] for row in rows]
    assert len(rows) == 30 and set(answered) <= set(labels)  # constrained to the teacher's label set
    student_task = read_manifest(result.specialist_dir).task
    assert student_task.kind == "label" and set(student_task.labels) <= set(labels)


def labelling_teacher() -> tuple[FastAPI, dict]:
    """An OpenAI-compatible teacher that labels tickets by keyword, in its own words, and refuses some."""
    state: dict = {"systems": []}
    app = FastAPI()
    words = {"invoice": "Billing.", "down": "outage", "phishing": "I think this is about security"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        messages = body["messages"]
        state["systems"].append(messages[0]["content"] if messages[0]["role"] == "system" else None)
        text = messages[-1]["content"]
        if text.startswith(("ticket 503", "ticket 504", "ticket 505")):
            return JSONResponse({"error": {"message": "refused"}}, status_code=400)
        content = next(answer for word, answer in words.items() if word in text)
        return chat_completion(body["model"], content, 20, 2)

    return app, state


def test_sequence_distillation_from_an_endpoint_teacher_validates_its_answers(tiny_config, tmp_path) -> None:
    from conftest import running, ticket_rows, write_jsonl
    from niche.artifact import read_manifest
    from niche.distill import distill_sequences

    app, state = labelling_teacher()
    inputs = [{"text": row["text"]} for row in ticket_rows(30, 500)]
    inputs.append({"text": ticket_rows(1, 60)[0]["text"]})  # a test row: must not become training data
    unlabeled = write_jsonl(tmp_path / "unlabeled.jsonl", inputs)
    with running(app) as url:
        result, summary = distill_sequences(
            tiny_config("name=student-api", "training.max_steps=2"),
            f"{url}/v1",
            unlabeled,
            teacher_model="big-teacher",
            concurrency=3,
        )
    assert set(state["systems"]) == {"Route the ticket to one of: billing, outage, security."}
    # tickets 503-505 refused (9 rows), phishing answers are not labels (7 of the 10 not refused),
    # the copied test row is a near duplicate of the test split (1).
    assert summary["rejected"] == {"teacher": 9, "label": 7, "near_duplicate_test": 1}
    assert summary["answered"] == 31 - 17 and summary["teacher_usage"]["completion_tokens"] == 2 * 22
    work = tmp_path / "out" / ".student-api.distill"
    rows = [json.loads(line) for line in (work / "teacher_rows.jsonl").read_text().splitlines()]
    assert {row["label"] for row in rows} == {"billing", "outage"}  # "Billing." read as the label billing
    assert all(row["teacher"] == f"{url}/v1#big-teacher" and row["source"] == "distilled" for row in rows)
    rejects = [json.loads(line) for line in (work / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 17 and all(
        reject["reason"] and reject["source"].startswith(str(unlabeled)) for reject in rejects
    )
    assert read_manifest(result.specialist_dir).task.labels == ["billing", "outage"]
