"""niche eval --engine ray: a pool of Ray actors on the 2-CPU loopback cluster answers the held-out rows exactly
as the in-process path does, for the specialist and for the bare base asked the same task."""

from __future__ import annotations

from niche.eval import evaluate
from niche.train import train


def test_ray_actors_give_the_in_process_answers(ray_cluster, tiny_config, label_data) -> None:
    config = tiny_config("training.max_steps=6", "training.eval_every=3", "training.objective=generate")
    specialist = train(config, show_progress=False).specialist_dir
    options = {"base": "base", "batch_size": 2, "constrain": False, "max_new_tokens": 6, "show_progress": False}
    local = evaluate(specialist, label_data["test"], **options)
    on_ray = evaluate(specialist, label_data["test"], engine="ray", ray_address=ray_cluster, **options)
    assert [result.name for result in on_ray.results] == [result.name for result in local.results]
    for mine, theirs in zip(on_ray.results, local.results, strict=True):
        assert mine.predictions == theirs.predictions, mine.name
        assert mine.metrics == theirs.metrics
    # Unconstrained greedy answers of a barely trained model: varied text, so agreement is no accident.
    assert len({prediction for result in local.results for prediction in result.predictions}) > 2
