"""niche serve as a client sees it: a real uvicorn server on loopback, the official openai client."""

import json
import os
import socket
import time
import urllib.error
import urllib.request
from http.client import HTTPConnection
from pathlib import Path

import openai
import pytest
import torch

from conftest import running
from niche.data.examples import Example
from niche.hardware import KERNEL_CACHE_ENTRIES, KERNEL_CACHE_VARIABLES
from niche.serve.app import ServeSettings, create_app
from niche.serve.base import BASE_MODEL_NAME, SamplingParams
from niche.serve.torch_engine import TorchEngine
from niche.train import train


@pytest.fixture(scope="module")
def specialists_dir(tmp_path_factory, tiny_base) -> Path:
    """Two toy specialists on the same tiny base, trained to answer differently."""
    from conftest import ticket_rows, write_jsonl
    from niche.config import load_config

    root = tmp_path_factory.mktemp("serve")
    rows = ticket_rows(24)
    write_jsonl(root / "train.jsonl", rows)
    shouting = [{"text": row["text"], "label": row["label"].upper()} for row in rows]
    write_jsonl(root / "train-upper.jsonl", shouting)
    dishes = {
        "soup": "how long should I simmer a vegetable soup",
        "bread": "my sourdough loaf did not rise in the oven",
        "salad": "which dressing goes with a green salad and goat cheese",
    }
    recipes = [  # the plain questions too: the tests ask them, and a 2-layer model barely generalises
        {"text": text if index < 4 else f"{text} (question {index})", "label": label}
        for index in range(8)
        for label, text in dishes.items()
    ]
    write_jsonl(root / "train-chef.jsonl", recipes)
    for name, data in (("router", "train.jsonl"), ("shouter", "train-upper.jsonl"), ("chef", "train-chef.jsonl")):
        config = load_config(
            None,
            [
                f"base={tiny_base}",
                f"output_dir={root / 'specialists'}",
                f"name={name}",
                f"data.train={root / data}",
                "prompt.system_prompt=Route the ticket: {labels}.",
                "training.max_steps=30",
                "training.batch_size=8",
                "training.eval_every=30",
                "training.learning_rate=0.01",
                "training.objective=generate",
                "lora.r=16",
                "lora.alpha=32",
            ],
        )
        train(config, show_progress=False)
    return root / "specialists"


def http(method: str, url: str) -> tuple[int, str]:
    """A plain HTTP call with the standard library, for the endpoints outside the OpenAI API."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def http_json(method: str, url: str) -> dict:
    status, body = http(method, url)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture(scope="module")
def engine(specialists_dir) -> TorchEngine:
    return TorchEngine(specialists_dir, max_loaded=1)


@pytest.fixture(scope="module")
def server(engine):
    with running(create_app(engine, router=engine.router(threshold=0.3))) as url:
        yield engine, openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def ask(client, model: str, text: str, **options):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=8, **options
    )


def test_models_lists_every_specialist_and_the_base(server) -> None:
    _, client = server
    assert sorted(model.id for model in client.models.list().data) == [
        "auto",
        BASE_MODEL_NAME,
        "chef",
        "router",
        "shouter",
    ]


def test_each_specialist_answers_with_its_own_adapter(server) -> None:
    engine, client = server
    question = "ticket 7: invoice charged twice"
    for model in ("router", "shouter", "router"):  # max_loaded=1: every switch evicts and reloads
        reply = ask(client, model, question)
        alone = engine.complete(
            model, [{"role": "user", "content": question}], SamplingParams(max_tokens=8, temperature=0)
        )
        assert reply.choices[0].message.content == alone.text
        assert reply.model == model and reply.usage.completion_tokens == alone.completion_tokens
    assert ask(client, "router", question).choices[0].message.content == "billing"
    assert ask(client, "shouter", question).choices[0].message.content == "BILLING"
    assert ask(client, "router", question).choices[0].finish_reason == "stop"


def test_streaming_concatenates_to_the_full_answer(server) -> None:
    _, client = server
    full = ask(client, "router", "ticket 8: site is down again").choices[0].message.content
    stream = ask(client, "router", "ticket 8: site is down again", stream=True)
    chunks = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(chunks) == full == "outage"


def test_completions_endpoint_and_stop_strings(server) -> None:
    _, client = server
    reply = client.completions.create(
        model="router", prompt="ticket 9: phishing email received", temperature=0, max_tokens=8
    )
    assert reply.choices[0].text == "security"
    stopped = ask(client, "router", "ticket 9: phishing email received", stop=["cur"])
    assert stopped.choices[0].message.content == "se" and stopped.choices[0].finish_reason == "stop"


def test_base_model_is_served_with_the_adapters_off(server) -> None:
    _, client = server
    reply = ask(client, BASE_MODEL_NAME, "ticket 7: invoice charged twice")
    assert reply.choices[0].message.content != "billing"


def test_errors_are_openai_shaped_and_do_not_stop_the_server(server) -> None:
    _, client = server
    with pytest.raises(openai.NotFoundError) as missing:
        ask(client, "no-such-specialist", "hi")
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="router", messages=[], max_tokens=8)
    assert "messages" in bad.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        ask(client, "router", "hi", n=2)
    assert ask(client, "router", "ticket 1: site is down again").choices[0].message.content == "outage"


def test_api_keys_body_limit_and_public_health(engine) -> None:
    with running(create_app(engine, ServeSettings(frozenset({"secret"}), max_body_bytes=2000))) as url:
        with pytest.raises(openai.AuthenticationError):
            ask(openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0), "router", "hi")
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="secret", max_retries=0, timeout=60)
        assert ask(client, "router", "ticket 2: site is down again").choices[0].message.content == "outage"
        with pytest.raises(openai.APIStatusError) as too_big:
            ask(client, "router", "x" * 5000)
        assert too_big.value.status_code == 413
        assert http_json("GET", f"{url}/health")["status"] == "ok"
        # Chunked bodies state no length: the limit still holds, and a small chunked request still works.
        for text, status in (("x" * 5000, 413), ("ticket 2: site is down again", 200)):
            body = json.dumps({"model": "router", "messages": [{"role": "user", "content": text}], "max_tokens": 4})
            request = urllib.request.Request(
                f"{url}/v1/chat/completions",
                data=iter([body[:100].encode(), body[100:].encode()]),
                headers={"Authorization": "Bearer secret", "Content-Type": "application/json"},
                method="POST",
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    got, reply = response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                got, reply = error.code, json.loads(error.read())
            assert got == status, reply
        assert reply["choices"][0]["message"]["content"] == "outage"


def test_metrics_count_requests_tokens_and_loaded_adapters(server) -> None:
    engine, client = server
    ask(client, "router", "ticket 3: invoice charged twice")
    _, text = http("GET", str(client.base_url).replace("/v1/", "/metrics"))
    assert 'niche_requests_total{model="router",path="/v1/chat/completions",status="200"}' in text
    assert 'niche_tokens_total{kind="completion",model="router"}' in text
    assert "niche_request_seconds_bucket" in text and "niche_loaded_adapters 1.0" in text


def test_admin_unload_load_and_reload_without_restart(server) -> None:
    engine, client = server
    admin = str(client.base_url).replace("/v1/", "/admin/specialists")
    ask(client, "router", "ticket 4: invoice charged twice")
    assert http_json("POST", f"{admin}/router/unload")["loaded"] == []
    assert http_json("POST", f"{admin}/shouter/load")["loaded"] == ["shouter"]
    http_json("POST", f"{admin}/router/reload")
    assert ask(client, "router", "ticket 4: invoice charged twice").choices[0].message.content == "billing"
    assert http("POST", f"{admin}/nobody/load")[0] == 404
    assert http("POST", f"{admin}/router/explode")[0] == 400


def test_vllm_command_serves_the_same_base_and_adapters(specialists_dir, engine) -> None:
    from niche.serve.vllm import vllm_command

    command = vllm_command(specialists_dir, port=9000)
    assert command[:3] == ["vllm", "serve", str(engine.base_directory)]
    assert "--enable-lora" in command and f"router={(specialists_dir / 'router').resolve()}" in command
    assert command[command.index("--max-lora-rank") + 1] == "16" and command[-1] == "9000"


def test_auto_routes_to_the_specialist_of_the_domain_and_says_which(server) -> None:
    _, client = server
    cooking = ask(client, "auto", "my bread dough is not rising, what went wrong?")
    assert cooking.model == "chef"
    ticket = ask(client, "auto", "ticket 12: we were charged twice on the last invoice")
    assert ticket.model in {"router", "shouter"}
    unrelated = ask(client, "auto", "Quarterly results of the Norwegian salmon export market")
    assert unrelated.model == BASE_MODEL_NAME, "below the threshold the base model answers"


def test_router_scores_by_nearest_training_inputs(engine) -> None:
    router = engine.router(threshold=0.3)
    scores = router.scores("what dressing should I put on a salad")
    assert max(scores, key=scores.get) == "chef" and scores["chef"] > 0.5
    assert router.route("zzzz qqqq").model == BASE_MODEL_NAME


def test_label_response_format_only_decodes_labels(server) -> None:
    _, client = server
    reply = ask(client, "router", "completely unrelated words", response_format={"type": "label"})
    assert reply.choices[0].message.content in {"billing", "outage", "security"}
    with pytest.raises(openai.BadRequestError, match="label specialist"):
        ask(client, BASE_MODEL_NAME, "hi", response_format={"type": "label"})


def test_an_answer_that_stops_at_once_is_empty_not_an_error(engine) -> None:
    from niche.decoding import AnswerTrie, LabelConstraint

    encoder = engine.encoder_of("router")
    prompt = encoder.prompt_ids(Example(messages=({"role": "user", "content": "ticket 5"},), response=""))
    only_stop = LabelConstraint(AnswerTrie([], encoder.stop_ids))  # the first token can only end the answer
    *deltas, completion = engine.generate(
        "router", prompt, SamplingParams(max_tokens=4, temperature=0), only_stop
    ).stream()
    assert deltas == [] and completion.text == "" and completion.finish_reason == "stop"
    assert completion.completion_tokens == 0


def test_requests_for_different_specialists_share_one_batch_and_match_solo_answers(engine) -> None:
    questions = [
        ("router", "ticket 7: invoice charged twice"),
        ("shouter", "ticket 7: invoice charged twice"),
        ("chef", "my sourdough loaf did not rise in the oven"),
        (BASE_MODEL_NAME, "ticket 8: site is down again"),
        ("router", "ticket 9: phishing email received"),
        ("shouter", "ticket 8: site is down again"),
    ]
    params = SamplingParams(max_tokens=6, temperature=0)
    solo = [engine.complete(model, [{"role": "user", "content": text}], params).text for model, text in questions]
    peak_before = engine.peak_rows
    # Submitted together: admitted as one mixed-adapter batch (max_loaded=1 is not a limit for running rows).
    engine.max_loaded = 3
    try:
        pending = [engine.submit(model, [{"role": "user", "content": text}], params) for model, text in questions]
        together = [generation.result().text for generation in pending]
    finally:
        engine.max_loaded = 1
    assert together == solo
    assert solo[:3] == ["billing", "BILLING", "bread"]
    assert engine.peak_rows > max(peak_before, 1)


def test_rows_joining_and_leaving_the_running_batch_decode_as_they_would_alone(engine) -> None:
    """More requests than batch rows, of every prompt and answer length: newcomers take the rows of finished
    ones while the batch runs, and the cache widens and re-lays out under them."""
    import random

    from niche.serve.kvcache import BatchKVCache

    rng = random.Random(3)
    words = [
        "invoice",
        "charged",
        "twice",
        "site",
        "is",
        "down",
        "again",
        "phishing",
        "email",
        "received",
        "refund",
        "please",
    ]
    work = [
        (
            rng.choice(["router", "shouter", BASE_MODEL_NAME]),
            " ".join(rng.choice(words) for _ in range(rng.choice([1, 3, 8, 20, 40]))),
            SamplingParams(max_tokens=rng.randint(1, 9), temperature=0, ignore_eos=True),
        )
        for _ in range(20)
    ]
    solo = [engine.complete(model, [{"role": "user", "content": text}], params) for model, text, params in work]
    seen_caches = []
    original_decode_step = engine._decode_step

    def decode_step() -> None:
        seen_caches.append((type(engine.cache), engine.cache.rows, engine.cache.column_capacity))
        original_decode_step()

    engine.max_batch_size, engine.max_loaded, engine._decode_step = 5, 2, decode_step
    steps, prefills = engine.steps, engine.forward_calls["prefill"]
    try:
        pending = [engine.submit(model, [{"role": "user", "content": text}], params) for model, text, params in work]
        together = [generation.result() for generation in pending]
    finally:
        engine.max_batch_size, engine.max_loaded = 16, 1
        del engine._decode_step
    assert [completion.text for completion in together] == [completion.text for completion in solo]
    assert [completion.completion_tokens for completion in together] == [params.max_tokens for *_, params in work]
    assert {kind for kind, *_ in seen_caches} == {BatchKVCache}
    assert max(rows for _, rows, _ in seen_caches) == 5
    assert len({capacity for *_, capacity in seen_caches}) > 1, "the cache was re-laid out for longer prompts"
    assert engine.steps - steps < sum(params.max_tokens for *_, params in work) - len(work)
    assert engine.forward_calls["prefill"] - prefills > 2, "newcomers joined the running batch"


def test_concurrent_clients_for_several_specialists_get_their_own_answers(server) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine, client = server
    questions = [
        ("router", "ticket 7: invoice charged twice"),
        ("shouter", "ticket 8: site is down again"),
        ("chef", "which dressing goes with a green salad and goat cheese"),
        (BASE_MODEL_NAME, "ticket 9: phishing email received"),
    ] * 3
    solo = [ask(client, model, text).choices[0].message.content for model, text in questions]
    assert solo[:3] == ["billing", "OUTAGE", "salad"]

    def streamed(model: str, text: str) -> str:
        chunks = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": text}], temperature=0, max_tokens=8, stream=True
        )
        return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)

    engine.peak_rows, engine.max_loaded = 0, 4
    try:
        with ThreadPoolExecutor(max_workers=len(questions)) as pool:
            futures = [
                pool.submit(streamed if index % 2 else lambda m, t: ask(client, m, t).choices[0].message.content, *q)
                for index, q in enumerate(questions)
            ]
            together = [future.result() for future in futures]
    finally:
        engine.max_loaded = 1
    assert together == solo
    assert engine.peak_rows > 1, "the concurrent requests were decoded together"


KERNEL_CACHE_PROBE = """
import os, sys
from niche.hardware import bound_kernel_caches
if sys.argv[1] != "default":
    bound_kernel_caches(entries=int(sys.argv[1]))
import torch
weight = torch.randn(8, 16).to_mkldnn()
for _ in range(3):
    for rows in (1, 2, 3):  # three shapes, three kernels
        torch._C._nn.mkldnn_linear(torch.randn(rows, 16).to_mkldnn(), weight)
"""


def kernel_cache_hits(entries: str) -> int:
    """oneDNN's own count of matmul kernels found in its cache, in a fresh process (it reads its bound once)."""
    import subprocess
    import sys

    environment = {key: value for key, value in os.environ.items() if key not in KERNEL_CACHE_VARIABLES}
    process = subprocess.run(
        [sys.executable, "-c", KERNEL_CACHE_PROBE, entries],
        env=environment | {"ONEDNN_VERBOSE": "2"},  # 2: log every kernel creation, hit or miss
        capture_output=True,
        text=True,
        check=True,
    )
    created = [line for line in process.stdout.splitlines() if ",create:" in line and "inner_product" in line]
    assert created, process.stdout[-2000:] + process.stderr[-2000:]
    return sum(",create:cache_hit," in line for line in created)


def test_kernel_caches_are_bounded_before_the_first_matmul_and_a_users_bound_wins(specialists_dir, monkeypatch) -> None:
    """oneDNN keeps a kernel per input shape (~0.7 MiB each, 1,024 by default); a server meets new prefill shapes
    for as long as it runs, so the engine bounds the caches, and the bound reaches oneDNN."""
    assert kernel_cache_hits("default") == 6, "three shapes met three times: the last two rounds hit"
    assert kernel_cache_hits("1") == 0, "one entry and three alternating shapes: every call compiles"
    for variable in KERNEL_CACHE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "77")
    TorchEngine(specialists_dir, max_loaded=1).close()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(KERNEL_CACHE_ENTRIES)
    assert os.environ["LRU_CACHE_CAPACITY"] == "77"


def test_forward_passes_run_on_every_core_in_the_scheduler_and_the_work_beside_it_on_one(
    specialists_dir, monkeypatch
) -> None:
    """OpenMP gives each thread that runs parallel torch ops a team of its own, and a second team slows the
    scheduler's forward passes: the model loads, admin calls and routing run on one intra-op thread, the
    scheduler on the engine's count, and the caller's own setting is left as it was."""
    from niche.serve import torch_engine as engine_module

    threads_seen: dict[str, int] = {}
    original_load_model = engine_module.load_model

    def load_model(*args, **kwargs):
        threads_seen["model load"] = torch.get_num_threads()
        return original_load_model(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_model", load_model)
    serving = TorchEngine(specialists_dir, max_loaded=2)
    try:
        assert torch.get_num_threads() == serving.threads, "the caller's thread count is restored"
        original_forward, original_load_adapter = serving._forward, serving._load_adapter

        def forward(*args, **kwargs):
            threads_seen["forward"] = torch.get_num_threads()
            return original_forward(*args, **kwargs)

        def load_adapter(*args) -> None:
            threads_seen.setdefault("admin load", torch.get_num_threads())
            original_load_adapter(*args)

        serving._forward, serving._load_adapter = forward, load_adapter
        serving.load("shouter")  # from this thread, as an admin request would
        answer = serving.complete(
            "router",
            [{"role": "user", "content": "ticket 5: invoice charged twice"}],
            SamplingParams(max_tokens=4, temperature=0),
        )
        router = serving.router(threshold=0.3)
        original_encode = router.embedder.encode

        def encode(*args, **kwargs):
            threads_seen["routing"] = torch.get_num_threads()
            return original_encode(*args, **kwargs)

        router.embedder.encode = encode
        route = router.route("ticket 6: site is down again")
    finally:
        serving.close()
    assert answer.text == "billing" and route.model in {"router", "shouter"}
    assert threads_seen == {"model load": 1, "admin load": 1, "forward": serving.threads, "routing": 1}
    assert torch.get_num_threads() == serving.threads


def test_a_failed_prefill_fails_its_requests_at_once_and_the_engine_serves_on(engine) -> None:
    question = [{"role": "user", "content": "ticket 12: invoice charged twice"}]
    params = SamplingParams(max_tokens=4, temperature=0)
    original_forward = engine._forward
    failures = []

    def forward(adapters, **inputs):
        if inputs["input_ids"].shape[1] > 1 and not failures:
            failures.append(len(adapters))
            raise RuntimeError("out of memory in the prefill")
        return original_forward(adapters, **inputs)

    engine._forward = forward
    try:
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="out of memory in the prefill"):
            engine.complete("router", question, params)
        assert time.monotonic() - started < 10, "the request failed at once, not at its timeout"
        assert engine.complete("router", question, params).text == "billing"
    finally:
        del engine._forward
    assert failures == [1]


def test_a_request_joins_a_batch_that_is_already_decoding(engine) -> None:
    long_params = SamplingParams(max_tokens=48, temperature=0)
    short_params = SamplingParams(max_tokens=6, temperature=0)
    question = [{"role": "user", "content": "ticket 3: site is down again"}]
    long_alone = engine.complete(BASE_MODEL_NAME, question, long_params)
    short_alone = engine.complete("router", question, short_params)
    long_running = engine.submit(BASE_MODEL_NAME, question, long_params)
    stream = long_running.stream()
    next(stream)  # the long request is decoding now
    steps_before = engine.steps
    joined = engine.complete("router", question, short_params)
    rest = list(stream)
    assert joined.text == short_alone.text == "outage"
    assert rest[-1].text == long_alone.text and rest[-1].completion_tokens == long_alone.completion_tokens
    assert engine.steps - steps_before < long_alone.completion_tokens + short_alone.completion_tokens


def test_json_schema_response_format_gives_valid_json(server) -> None:
    import jsonschema

    _, client = server
    schema = {
        "type": "object",
        "properties": {
            "team": {"enum": ["billing", "outage", "security"]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 5},
            "summary": {"type": "string", "maxLength": 20},
        },
        "required": ["team", "priority", "summary"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "ticket", "schema": schema, "strict": True}}
    for model in ("router", BASE_MODEL_NAME):
        reply = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "ticket 7: invoice charged twice"}],
            temperature=0.7,
            seed=3,
            max_tokens=64,
            response_format=response_format,
        )
        answer = reply.choices[0].message.content
        jsonschema.validate(json.loads(answer), schema)
        assert reply.choices[0].finish_reason == "stop"
    any_object = client.chat.completions.create(
        model="router",
        messages=[{"role": "user", "content": "ticket 2"}],
        max_tokens=48,
        response_format={"type": "json_object"},
    )
    content = any_object.choices[0].message.content
    assert content.startswith("{")
    if any_object.choices[0].finish_reason == "stop":  # a random model may still be inside the object at 48 tokens
        assert isinstance(json.loads(content), dict)


def test_a_schema_that_cannot_compile_is_a_400_that_names_it(server) -> None:
    _, client = server
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "bogus"}}}
    with pytest.raises(openai.BadRequestError, match="json_schema.schema") as error:
        ask(client, "router", "hi", response_format=bad)
    assert "bogus" in error.value.body["message"]
    with pytest.raises(openai.BadRequestError, match="json_schema"):
        ask(client, "router", "hi", response_format={"type": "json_schema"})
    assert ask(client, "router", "ticket 1: site is down again").choices[0].message.content == "outage"


def test_a_request_past_the_timeout_gets_504_and_the_server_goes_on(specialists_dir) -> None:
    slow = TorchEngine(specialists_dir, timeout_s=0.0)
    try:
        with running(create_app(slow)) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            with pytest.raises(openai.APIStatusError) as timed_out:
                ask(client, "router", "ticket 7: invoice charged twice")
            assert timed_out.value.status_code == 504 and timed_out.value.body["code"] == "timeout"
            slow.timeout_s = 60
            assert ask(client, "router", "ticket 7: invoice charged twice").choices[0].message.content == "billing"
    finally:
        slow.close()


def test_reload_lets_running_requests_finish_on_the_old_adapter(engine) -> None:
    question = [{"role": "user", "content": "ticket 3: site is down again"}]
    params = SamplingParams(max_tokens=32, temperature=0)
    expected = engine.complete(BASE_MODEL_NAME, question, params)
    running_request = engine.submit("router", question, SamplingParams(max_tokens=32, temperature=0, stop=["\n\n\n"]))
    stream = running_request.stream()
    first = next(stream)
    engine.refresh("router")  # the running row keeps its adapter until it finishes
    *_, completion = [first, *stream]
    assert completion.text.startswith("outage") and expected.finish_reason in {"stop", "length"}
    deadline = time.monotonic() + 10  # the scheduler deletes it right after reporting the last row's end
    while engine.retired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.retired == set(), "the old adapter is deleted once its last row is done"


def test_stacked_multi_lora_matches_peft_mixed_adapter_batches(engine) -> None:
    from niche.serve import multilora

    engine.max_loaded = 3
    try:
        for name in ("router", "shouter", "chef"):
            engine.load(name)
        adapters = [engine.loaded["router"], "__base__", engine.loaded["shouter"], engine.loaded["chef"]]
        prompts = torch.randint(0, engine.tokenizer.vocab_size, (4, 12))
        inputs = {
            "input_ids": prompts,
            "attention_mask": torch.ones_like(prompts),
            "position_ids": torch.arange(12).repeat(4, 1),
        }

        def prefill_then_decode() -> tuple[torch.Tensor, torch.Tensor]:
            """Logits of the prompt's pass and of one decode step on its cache (the two multi-LoRA paths)."""
            prefill = engine._forward(adapters, **inputs)
            decode = engine._forward(
                adapters,
                input_ids=prompts[:, :1],
                attention_mask=torch.ones(4, 13, dtype=torch.long),
                position_ids=torch.full((4, 1), 12),
                past_key_values=prefill.past_key_values,
            )
            return prefill.logits.float(), decode.logits.float()

        dtype = engine.model.dtype
        with engine.lock, torch.no_grad():
            # In fp32 whatever the hardware's serving dtype: a tight tolerance then tells a wrong adapter or
            # scale (differences of order 1e-1) from summation order (order 1e-6).
            engine.model.to(torch.float32)
            engine._adapters_changed()
            try:
                assert engine.stacked_lora
                stacked = prefill_then_decode()
                multilora.restore(engine.model)
                engine.stacked_lora = False
                reference = prefill_then_decode()
            finally:
                engine.model.to(dtype)
                engine._adapters_changed()
        for ours, theirs in zip(stacked, reference):
            assert ours.dtype == theirs.dtype == torch.float32
            assert torch.allclose(ours, theirs, rtol=0, atol=1e-5 * theirs.abs().max().item())
            assert not torch.allclose(theirs[0], theirs[1]), "the adapter must change the router row"
    finally:
        engine.max_loaded = 1


def test_a_cached_prompt_prefix_gives_the_same_answer(engine) -> None:
    params = SamplingParams(max_tokens=6, temperature=0)
    engine.prefixes.clear()
    engine.last_prompts.clear()
    answers = [
        engine.complete("router", [{"role": "user", "content": text}], params).text
        for text in (
            "ticket 31: invoice charged twice",
            "ticket 32: site is down again",
            "ticket 33: invoice charged twice",
        )
    ]
    assert answers == ["billing", "outage", "billing"]
    hits = engine.prefix_hits
    engine.complete("router", [{"role": "user", "content": "ticket 34: phishing email received"}], params)
    assert engine.prefix_hits == hits + 1


def test_newcomers_on_cached_prefixes_of_different_lengths_prefill_together_and_answer_as_alone(engine) -> None:
    questions = [
        ("router", "ticket 41: invoice charged twice"),
        ("chef", "which dressing goes with a green salad and goat cheese, and how much of it per plate"),
        ("shouter", "ticket 42: phishing email received"),
        ("router", "ticket 43, reported by the night shift after the second failed deploy: site is down again"),
    ]
    params = SamplingParams(max_tokens=6, temperature=0)
    engine.max_loaded = 3
    try:
        alone = []
        for model, text in questions:  # no cached prefix: every prompt runs whole
            engine.prefixes.clear()
            engine.last_prompts.clear()
            alone.append(engine.complete(model, [{"role": "user", "content": text}], params).text)
        for model in ("router", "chef", "shouter"):  # two prompts each leave the system prompt cached
            for text in ("alpha: warm up", "bravo: warm up again"):
                engine.complete(model, [{"role": "user", "content": text}], params)
        prefix_lengths = {len(engine.prefixes[engine.loaded[model]].tokens) for model in ("router", "chef", "shouter")}
        assert len(prefix_lengths) > 1, "the specialists' cached prefixes should differ in length"
        hits, prefills = engine.prefix_hits, engine.forward_calls["prefill"]
        pending = [engine.submit(model, [{"role": "user", "content": text}], params) for model, text in questions]
        together = [generation.result().text for generation in pending]
    finally:
        engine.max_loaded = 1
    assert together == alone
    assert engine.prefix_hits - hits == len(questions)
    assert engine.forward_calls["prefill"] - prefills < len(questions), "newcomers should share prefill passes"


@pytest.fixture(scope="module")
def llama(specialists_dir):
    from niche.serve.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(specialists_dir, max_loaded=2)
    yield engine
    engine.close()


def test_llamacpp_engine_serves_two_adapters_alternating_and_concurrently(llama) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = llama
    with running(create_app(engine)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        questions = [
            ("router", "ticket 7: invoice charged twice"),
            ("shouter", "ticket 7: invoice charged twice"),
            ("router", "ticket 4: site is down again"),
            ("shouter", "ticket 2: phishing email received"),
            (BASE_MODEL_NAME, "ticket 8: site is down again"),
        ]
        alone = [ask(client, model, text).choices[0].message.content for model, text in questions]
        # Tickets the specialists trained on (numbers 0-7): their labels are learned with a wide margin.
        assert alone[:4] == ["billing", "BILLING", "outage", "SECURITY"]
        alternating = [ask(client, model, text).choices[0].message.content for model, text in questions * 2]
        assert alternating == alone * 2
        with ThreadPoolExecutor(8) as pool:
            concurrent = list(pool.map(lambda q: ask(client, *q).choices[0].message.content, questions * 3))
        assert concurrent == alone * 3
        streamed = client.chat.completions.create(
            model="shouter",
            messages=[{"role": "user", "content": questions[1][1]}],
            temperature=0,
            max_tokens=8,
            stream=True,
        )
        assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices) == "BILLING"
        labelled = ask(client, "router", "ticket 10: phishing email received", response_format={"type": "label"})
        assert labelled.choices[0].message.content in {"billing", "outage", "security"}
        with pytest.raises(openai.NotFoundError):
            ask(client, "nobody", "hello")
        metrics = http("GET", f"{url}/metrics")[1]
        assert 'niche_forward_calls_total{phase="prefill"}' in metrics
    assert engine.forward_calls["prefill"] >= len(questions) * 6


# ---- limits, faults and streaming edge cases -------------------------------------------------------------------


def raw_request(url: str, method: str, path: str, body: dict | None = None, headers: dict | None = None):
    """One request through http.client, which sends header values as given (latin-1): (status, headers with
    lower-case names, body)."""
    host, port = url.removeprefix("http://").split(":")
    connection = HTTPConnection(host, int(port), timeout=60)
    try:
        data = json.dumps(body).encode() if body is not None else None
        connection.putrequest(method, path)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            for one in value if isinstance(value, list) else [value]:
                connection.putheader(name, one)
        connection.putheader("Content-Length", str(len(data or b"")))
        connection.endheaders(data)
        response = connection.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read().decode()
    finally:
        connection.close()


def chat_body(model: str, text: str, **options) -> dict:
    return {
        "model": model,
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
        "max_tokens": 8,
    } | options


def sse_data(text: str) -> list:
    """The JSON payloads of a server-sent event stream, "[DONE]" kept as a string."""
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def cut_stream(url: str, body: dict) -> None:
    """Start a streamed request, read until its first event, and close the connection."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body | {"stream": True}).encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        received = b""
        while b"data: " not in received:
            chunk = sock.recv(4096)
            assert chunk, f"the server closed the stream before its first event: {received!r}"
            received += chunk


def test_include_usage_ends_the_stream_with_a_usage_chunk_without_choices(server) -> None:
    _, client = server
    chunks = list(
        ask(client, "router", "ticket 8: site is down again", stream=True, stream_options={"include_usage": True})
    )
    *content, finish, last = chunks
    assert last.choices == [] and last.usage.completion_tokens >= 1
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert finish.choices[0].finish_reason == "stop" and finish.usage is None
    assert "".join(chunk.choices[0].delta.content or "" for chunk in content) == "outage"
    plain = list(ask(client, "router", "ticket 8: site is down again", stream=True))
    assert all(chunk.usage is None for chunk in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_request_headers_up_to_the_documented_limit_are_accepted(engine) -> None:
    from niche.serve.http import MAX_HEADER_BYTES

    with running(create_app(engine)) as url:
        assert raw_request(url, "GET", "/health", headers={"X-Trace": "a" * 64 * 1024})[0] == 200
        status, _, _ = raw_request(url, "GET", "/health", headers={"X-Trace": "a" * (MAX_HEADER_BYTES + 1024)})
        assert status == 431
        assert raw_request(url, "GET", "/health")[0] == 200


def test_too_many_stop_strings_are_a_fast_400_naming_stop(server) -> None:
    _, client = server
    url = str(client.base_url).removesuffix("/v1/")
    for count in (17, 1000):
        started = time.monotonic()
        status, _, body = raw_request(
            url, "POST", "/v1/chat/completions", chat_body("router", "hi", stop=["x"] * count)
        )
        assert status == 400 and time.monotonic() - started < 5
        error = json.loads(body)["error"]
        assert error["param"] == "stop" and "at most 16 stop strings" in error["message"], error
    assert (
        ask(client, "router", "ticket 9: phishing email received", stop=["cur"] * 16).choices[0].message.content == "se"
    )


def test_unknown_fields_are_accepted_logged_and_counted(engine, caplog) -> None:
    app = create_app(engine)
    with running(app) as url, caplog.at_level("WARNING", logger="niche.serve"):
        body = chat_body("router", "ticket 7: invoice charged twice", frobnicate=1, presence_penalty=0.5)
        status, _, reply = raw_request(url, "POST", "/v1/chat/completions", body)
        assert status == 200 and json.loads(reply)["choices"][0]["message"]["content"] == "billing"
        assert raw_request(url, "POST", "/v1/chat/completions", chat_body("router", "ticket 7"))[0] == 200
        metrics = http("GET", f"{url}/metrics")[1]
    assert "niche_ignored_fields_total 2.0" in metrics
    warnings = [record.getMessage() for record in caplog.records if "ignored_fields" in record.getMessage()]
    assert len(warnings) == 1 and '["frobnicate", "presence_penalty"]' in warnings[0]


def test_api_keys_compare_the_raw_authorization_bytes(engine) -> None:
    with running(create_app(engine, ServeSettings(frozenset({"secret"})))) as url:

        def status_with(authorization: str | list[str]) -> int:
            body = chat_body("router", "ticket 7: invoice charged twice", max_tokens=2)
            return raw_request(url, "POST", "/v1/chat/completions", body, {"Authorization": authorization})[0]

        assert status_with("Bearer secret") == 200
        for wrong in ("Bearer secret\xa0", "Bearer secretx", "Bearer  secret", "bearer secret", "Bearer \xa0secret"):
            assert status_with(wrong) == 401, repr(wrong)
        assert status_with(["Bearer secret", "Bearer secret"]) == 401, "two Authorization headers"


def test_past_max_queue_requests_get_429_with_retry_after(engine) -> None:
    question = [{"role": "user", "content": "ticket 7: invoice charged twice"}]
    engine.max_queue = 2
    try:
        with running(create_app(engine)) as url:
            with engine.lock:  # the scheduler cannot start anything: submitted requests wait
                queued = [
                    engine.submit("router", question, SamplingParams(max_tokens=2, temperature=0)) for _ in range(2)
                ]
                status, headers, body = raw_request(url, "POST", "/v1/chat/completions", chat_body("router", "hi"))
            assert status == 429 and headers["retry-after"] == "1", body
            assert json.loads(body)["error"]["code"] == "queue_full"
            assert [generation.result().text for generation in queued] == ["billing", "billing"]
            assert raw_request(url, "POST", "/v1/chat/completions", chat_body("router", "ticket 7"))[0] == 200
    finally:
        engine.max_queue = 256


def test_a_client_that_closes_a_stream_frees_its_batch_row(server) -> None:
    engine, client = server
    url = str(client.base_url).removesuffix("/v1/")
    steps = engine.steps
    cut_stream(url, chat_body(BASE_MODEL_NAME, "ticket 3: site is down again", max_tokens=400, ignore_eos=True))
    deadline = time.monotonic() + 30
    while (engine.decoding() or engine.waiting) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.decoding() == 0 and engine.steps - steps < 200, "the cut stream was decoded to its end"
    assert ask(client, "router", "ticket 7: invoice charged twice").choices[0].message.content == "billing"


def test_top_p_draws_only_from_the_smallest_set_reaching_p() -> None:
    from niche.serve.base import next_token

    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    generator = torch.Generator().manual_seed(0)
    for top_p, allowed in ((0.4, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        params = SamplingParams(temperature=1.0, top_p=top_p)
        drawn = {next_token(logits, params, generator) for _ in range(3000)}
        assert drawn == allowed, (top_p, drawn)


def test_an_error_inside_a_stream_arrives_as_an_sse_error_event(engine) -> None:
    original_forward = engine._forward

    def forward(adapters, **inputs):
        if inputs["input_ids"].shape[1] == 1:
            raise RuntimeError("the device fell over mid-stream")
        return original_forward(adapters, **inputs)

    with running(create_app(engine)) as url:
        engine._forward = forward
        try:
            body = chat_body(BASE_MODEL_NAME, "ticket 3", max_tokens=16, ignore_eos=True, stream=True)
            status, _, text = raw_request(url, "POST", "/v1/chat/completions", body)
        finally:
            del engine._forward
        assert status == 200
        *_, error, done = sse_data(text)
        assert done == "[DONE]" and "the device fell over mid-stream" in error["error"]["message"]
        assert error["error"]["type"] == "server_error"
        assert raw_request(url, "POST", "/v1/chat/completions", chat_body("router", "ticket 7"))[0] == 200


def test_the_latency_histogram_covers_the_whole_stream(engine) -> None:
    original_forward = engine._forward

    def slow_forward(adapters, **inputs):
        time.sleep(0.02)
        return original_forward(adapters, **inputs)

    app = create_app(engine)
    labels = {"path": "/v1/chat/completions", "model": "router"}
    with running(app) as url:
        engine._forward = slow_forward
        try:
            host, port = url.removeprefix("http://").split(":")
            connection = HTTPConnection(host, int(port), timeout=60)
            body = json.dumps(chat_body("router", "ticket 3", max_tokens=40, ignore_eos=True, stream=True))
            connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            first_line = response.readline()
            first_at = time.monotonic()
            rest = response.read()
            stream_seconds = time.monotonic() - first_at
            connection.close()
        finally:
            del engine._forward
        assert first_line.startswith(b"data: ") and rest.rstrip().endswith(b"data: [DONE]")
        deadline = time.monotonic() + 5
        while not app.state.metrics.registry.get_sample_value("niche_request_seconds_count", labels):
            assert time.monotonic() < deadline, "the stream's latency was never recorded"
            time.sleep(0.01)
    recorded = app.state.metrics.registry.get_sample_value("niche_request_seconds_sum", labels)
    assert stream_seconds > 0.5 and recorded >= stream_seconds


def test_clients_dripping_headers_are_cut_and_do_not_hold_the_server(engine) -> None:
    from niche.serve.http import LimitedH11Protocol

    class QuickTimeout(LimitedH11Protocol):
        header_timeout_s = 1.5

    with running(create_app(engine), http=QuickTimeout) as url:
        host, port = url.removeprefix("http://").split(":")
        silent = socket.create_connection((host, int(port)), timeout=10)
        dripping = socket.create_connection((host, int(port)), timeout=10)
        started = time.monotonic()
        dripping.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for byte in b"X-Slo":  # well within the timeout: the cut comes while it waits for more
            dripping.sendall(bytes([byte]))
            assert raw_request(url, "GET", "/health")[0] == 200, "others are served meanwhile"
            time.sleep(0.1)
        answers = [dripping.recv(1024), silent.recv(1024)]
        assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), answers
        assert dripping.recv(1024) == b"" and silent.recv(1024) == b"", "both connections are closed"
        assert time.monotonic() - started < 5
        dripping.close()
        silent.close()


def test_llamacpp_reuses_an_adapters_prompt_prefix_and_never_another_adapters(llama) -> None:
    questions = [
        ("router", "ticket 1: invoice charged twice"),
        ("router", "ticket 5: site is down again"),
        ("shouter", "ticket 5: site is down again"),
        ("router", "ticket 2: phishing email received"),
        ("shouter", "ticket 1: invoice charged twice"),
    ]
    params = SamplingParams(max_tokens=6, temperature=0)
    fresh = []
    for model, text in questions:
        llama.forget_prefix()
        fresh.append(llama.complete(model, [{"role": "user", "content": text}], params).text)
    assert fresh == ["billing", "outage", "OUTAGE", "security", "BILLING"]
    llama.forget_prefix()
    hits = llama.prefix_hits
    kept = [llama.complete(model, [{"role": "user", "content": text}], params).text for model, text in questions]
    assert kept == fresh
    # Only the second router request follows a request on its own adapter; a switch always starts empty.
    assert llama.prefix_hits - hits == 1
    llama.complete("shouter", [{"role": "user", "content": "ticket 3"}], params)
    assert llama.prefix_hits - hits == 2


def test_llamacpp_stops_decoding_for_clients_that_went_away(llama) -> None:
    import gc

    with running(create_app(llama)) as url:
        decodes = llama.forward_calls["decode"]
        # With the garbage collector off, a cut reaches the engine only if the server acts on the disconnect
        # itself, not when the abandoned response gets collected (which once took 0.5 s per stream, each cut
        # stream decoding on meanwhile while the requests behind it waited).
        gc.disable()
        try:
            for _ in range(20):
                cut_stream(
                    url, chat_body(BASE_MODEL_NAME, "ticket 3: site is down again", max_tokens=1500, ignore_eos=True)
                )
            started = time.monotonic()
            status, _, body = raw_request(
                url, "POST", "/v1/chat/completions", chat_body("router", "ticket 4: site is down again")
            )
        finally:
            gc.enable()
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "outage"
        assert time.monotonic() - started < 10
    assert llama.forward_calls["decode"] - decodes < 20 * 200, "the cut streams were decoded to their end"


def test_llamacpp_queue_bound_and_usage_chunk(llama) -> None:
    question = [{"role": "user", "content": "ticket 7: invoice charged twice"}]
    llama.max_queue = 1
    try:
        with running(create_app(llama)) as url:
            with llama.lock:  # the running request holds the context; the next one waits, the one after is refused
                params = SamplingParams(max_tokens=2, temperature=0)
                queued = [llama.submit("router", question, params)]
                deadline = time.monotonic() + 10
                while llama.queued() and time.monotonic() < deadline:  # the scheduler took it, and waits for the lock
                    time.sleep(0.01)
                queued.append(llama.submit("router", question, params))
                status, headers, _ = raw_request(url, "POST", "/v1/chat/completions", chat_body("router", "hi"))
            assert status == 429 and headers["retry-after"] == "1"
            assert [generation.result().text for generation in queued] == ["billing", "billing"]
            body = chat_body(
                "shouter", "ticket 2: phishing email received", stream=True, stream_options={"include_usage": True}
            )
            status, _, text = raw_request(url, "POST", "/v1/chat/completions", body)
        *chunks, finish, last, done = sse_data(text)
        assert status == 200 and done == "[DONE]" and last["choices"] == [] and last["usage"]["completion_tokens"] > 0
        assert "usage" not in finish and finish["choices"][0]["finish_reason"] == "stop"
        assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == "SECURITY"
    finally:
        llama.max_queue = 256
