"""`niche eval --engine ray`: the held-out rows answered by a pool of Ray actors, each holding the model once.

The rows travel as Ray Data (`map_batches` over an actor pool of `AnswerActor`); each actor rebuilds, from an
`AnswerRecipe`, exactly what `evaluate` builds in its own process (the specialist or the bare base, the same
template, decoding options and constraints), so the answers are the same. The driver holds the rows and the
answers, which eval scores; the model lives on the workers. CPU actors only: one CPU and one torch thread each.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from typing import Any

import numpy as np
import ray
import ray.data
from rich.progress import Progress

from niche.data.examples import Example, example_from_json, example_to_json
from niche.eval.answering import AnswerRecipe, answerer
from niche.eval.generation import answer_examples
from niche.ray_runtime import cluster_cpus, ray_session


class AnswerActor:
    """One worker's model, loaded once, answering batches of rows."""

    def __init__(self, recipe: AnswerRecipe) -> None:
        import torch  # the actor's own process: one thread per actor, the pool fills the CPUs

        torch.set_num_threads(1)
        self.stack = ExitStack()
        self.model, self.encoder, self.options = self.stack.enter_context(answerer(recipe))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Each row is one of evaluate's batches: its rows' indices and examples, answered in one call."""
        answers = []
        for examples in batch["examples"]:
            answers.append(json.dumps(answer_examples(self.model, self.encoder, _examples(examples), self.options)))
        return {"indices": batch["indices"], "answers": np.array(answers, dtype=object)}


def _examples(text: str) -> list[Example]:
    return [example_from_json(one) for one in json.loads(text)]


def answer_on_ray(
    recipe: AnswerRecipe, examples: list[Example], batches: list[list[int]], actors: int | None = None
) -> list[str]:
    """Every example's answer, in order, from an actor pool on the cluster at `recipe.ray_address`; each of
    `batches` (lists of indices) is decoded together, as evaluate decodes it in its own process."""
    with ray_session(recipe.ray_address):
        pool = actors or cluster_cpus()
        rows = ray.data.from_items(
            [
                {
                    "indices": json.dumps(indices),
                    "examples": json.dumps([example_to_json(examples[index]) for index in indices]),
                }
                for indices in batches
            ]
        )
        answered = rows.map_batches(
            AnswerActor,
            fn_constructor_args=(recipe,),
            compute=ray.data.ActorPoolStrategy(size=pool),
            batch_size=1,
            num_cpus=1,
            batch_format="numpy",
        )
        answers: list[Any] = [None] * len(examples)
        with Progress(transient=True) as progress:
            task = progress.add_task(f"answering on {pool} Ray actors", total=len(examples))
            for batch in answered.iter_batches(batch_format="numpy", batch_size=1):
                indices, found = json.loads(batch["indices"][0]), json.loads(batch["answers"][0])
                for index, answer in zip(indices, found, strict=True):
                    answers[index] = answer
                progress.advance(task, len(indices))
        return answers
