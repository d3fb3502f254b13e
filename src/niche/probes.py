"""Forgetting probes: does a fine-tune cost the model its general ability?

Two measurements, each taken on the base model and on the specialist with the same inputs:
- perplexity on general-domain text (one passage per line; ../shared/datasets/wiki-sentences in tests and
  benchmarks, the user's own file otherwise);
- accuracy on a multiple-choice set of everyday knowledge, scored by log-likelihood as in lm-evaluation-harness:
  each choice is appended to the question and the choice with the highest mean log-probability per token wins.
  niche writes its own set (`everyday_questions()`, 205 questions built from the fact tables below); any user
  set in the same JSONL shape ({"question", "choices", "answer": index or choice text}) works too.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from niche.errors import DataError

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Russia": "Moscow", "Egypt": "Cairo",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Australia": "Canberra", "Kenya": "Nairobi", "Greece": "Athens", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin", "Turkey": "Ankara",
    "Thailand": "Bangkok", "South Korea": "Seoul", "Peru": "Lima", "Chile": "Santiago", "Cuba": "Havana",
    "Denmark": "Copenhagen", "Netherlands": "Amsterdam", "Belgium": "Brussels", "Hungary": "Budapest",
    "Czech Republic": "Prague", "United Kingdom": "London", "United States": "Washington, D.C.",
    "Indonesia": "Jakarta", "Vietnam": "Hanoi", "Nigeria": "Abuja", "Morocco": "Rabat",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night", "happy": "sad",
    "open": "closed", "early": "late", "full": "empty", "heavy": "light", "wet": "dry", "old": "young",
    "loud": "quiet", "strong": "weak", "rich": "poor", "hard": "soft", "high": "low", "long": "short",
    "push": "pull", "win": "lose", "buy": "sell", "begin": "end", "inside": "outside", "true": "false",
    "thick": "thin", "clean": "dirty", "cheap": "expensive", "easy": "difficult", "first": "last", "north": "south",
}  # fmt: skip
ANIMAL_YOUNG = {
    "cat": "kitten", "dog": "puppy", "cow": "calf", "sheep": "lamb", "horse": "foal", "goat": "kid",
    "bear": "cub", "duck": "duckling", "frog": "tadpole", "kangaroo": "joey", "pig": "piglet", "hen": "chick",
    "goose": "gosling", "deer": "fawn", "swan": "cygnet",
}  # fmt: skip
ANIMAL_SOUNDS = {
    "cow": "moo", "dog": "bark", "cat": "meow", "duck": "quack", "sheep": "baa", "lion": "roar",
    "snake": "hiss", "horse": "neigh", "pig": "oink", "owl": "hoot", "bee": "buzz", "mouse": "squeak",
    "frog": "croak", "wolf": "howl", "donkey": "bray",
}  # fmt: skip
TOOLS = {
    "cut paper": "scissors", "tell the time": "a clock", "sweep the floor": "a broom", "boil water": "a kettle",
    "write on a blackboard": "chalk", "dig a hole": "a shovel", "drive in a nail": "a hammer",
    "see in the dark": "a torch", "keep dry in the rain": "an umbrella", "take a photograph": "a camera",
    "unlock a door": "a key", "brush your teeth": "a toothbrush", "measure length": "a ruler",
    "keep food cold": "a refrigerator", "dry your hands": "a towel", "eat soup": "a spoon",
    "make a phone call": "a telephone", "cut bread": "a knife", "water the garden": "a hose",
    "travel across the sea": "a ship", "fly across the world": "an aeroplane", "carry your books": "a bag",
    "tighten a screw": "a screwdriver", "weigh yourself": "a scale", "look at the stars": "a telescope",
}  # fmt: skip
COLOURS = {
    "the sky on a clear day": "blue", "fresh grass": "green", "snow": "white", "coal": "black",
    "a ripe banana": "yellow", "a ripe tomato": "red", "an orange": "orange", "milk": "white",
    "a lemon": "yellow", "the sun in a child's drawing": "yellow", "a carrot": "orange", "blood": "red",
    "a crow": "black", "chocolate": "brown", "a polar bear": "white", "a strawberry": "red",
    "a lime": "green", "tree bark": "brown", "a plum": "purple", "the night sky": "black",
}  # fmt: skip
COUNTS = [
    ("How many days are there in a week?", "7"), ("How many months are there in a year?", "12"),
    ("How many hours are there in a day?", "24"), ("How many minutes are there in an hour?", "60"),
    ("How many seconds are there in a minute?", "60"), ("How many legs does a spider have?", "8"),
    ("How many legs does an insect have?", "6"), ("How many sides does a triangle have?", "3"),
    ("How many sides does a square have?", "4"), ("How many sides does a hexagon have?", "6"),
    ("How many days are there in a leap year?", "366"), ("How many days are there in a normal year?", "365"),
    ("How many continents are there?", "7"), ("How many players are on a football (soccer) team on the field?", "11"),
    ("How many strings does a standard guitar have?", "6"), ("How many wheels does a bicycle have?", "2"),
    ("How many wheels does a tricycle have?", "3"), ("How many letters are in the English alphabet?", "26"),
    ("How many centimetres are in a metre?", "100"), ("How many grams are in a kilogram?", "1000"),
]  # fmt: skip
FACTS = [
    ("What do bees make?", "honey", ["milk", "silk", "wax paper"]),
    ("Which planet do we live on?", "Earth", ["Mars", "Venus", "Jupiter"]),
    ("What do plants need from the sun to grow?", "light", ["sound", "salt", "plastic"]),
    ("At what temperature does water freeze, in degrees Celsius?", "0", ["100", "50", "-40"]),
    ("At what temperature does water boil at sea level, in degrees Celsius?", "100", ["0", "50", "212"]),
    ("What is frozen water called?", "ice", ["steam", "sand", "glass"]),
    ("Which season comes after winter?", "spring", ["autumn", "summer", "winter"]),
    (
        "Which is the largest ocean on Earth?",
        "the Pacific Ocean",
        ["the Atlantic Ocean", "the Indian Ocean", "the Arctic Ocean"],
    ),
    ("What gas do people need to breathe to live?", "oxygen", ["helium", "carbon monoxide", "neon"]),
    ("Which organ pumps blood around the body?", "the heart", ["the lungs", "the stomach", "the liver"]),
    ("What do caterpillars turn into?", "butterflies", ["spiders", "bees", "snails"]),
    ("Which day comes after Monday?", "Tuesday", ["Sunday", "Friday", "Thursday"]),
    ("Which month comes after March?", "April", ["May", "February", "June"]),
    ("What is the closest star to the Earth?", "the Sun", ["the Moon", "Mars", "Sirius"]),
    ("What do you call a word that means the same as another word?", "a synonym", ["an antonym", "a verb", "a noun"]),
    ("Which meal is eaten in the morning?", "breakfast", ["dinner", "supper", "lunch"]),
    ("Where do fish live?", "in water", ["in trees", "in the desert", "in the clouds"]),
    ("What falls from clouds when it rains?", "water", ["sand", "leaves", "ash"]),
    ("Which animal is known as the king of the jungle?", "the lion", ["the mouse", "the rabbit", "the cow"]),
    ("What is the main language spoken in Brazil?", "Portuguese", ["Spanish", "French", "English"]),
]


@dataclass(frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int


def _with_distractors(rng: random.Random, question: str, answer: str, pool: list[str]) -> Question:
    distractors = rng.sample(sorted({item for item in pool if item != answer}), 3)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return Question(question, tuple(choices), choices.index(answer))


def everyday_questions(seed: int = 0) -> list[Question]:
    """niche's general-knowledge multiple-choice set (205 questions), stable for a given seed."""
    rng = random.Random(seed)
    tables = (
        ("What is the capital of {}?", CAPITALS),
        ("What is the opposite of {}?", OPPOSITES),
        ("What is a baby {} called?", ANIMAL_YOUNG),
        ("What sound does a {} make?", ANIMAL_SOUNDS),
        ("What do you use to {}?", TOOLS),
        ("What colour is {}?", COLOURS),
    )
    questions = [
        _with_distractors(rng, template.format(subject), answer, list(table.values()))
        for template, table in tables
        for subject, answer in table.items()
    ]
    number_pool = sorted({answer for _, answer in COUNTS} | {"5", "10", "20", "30", "52"})
    questions += [_with_distractors(rng, question, answer, number_pool) for question, answer in COUNTS]
    for question, answer, distractors in FACTS:
        choices = [answer, *distractors]
        rng.shuffle(choices)
        questions.append(Question(question, tuple(choices), choices.index(answer)))
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < 20:
        pairs.add((rng.randint(2, 20), rng.randint(2, 20)))
    for left, right in sorted(pairs):
        pool = [str(left + right + offset) for offset in (-3, -2, -1, 1, 2, 3)] + [str(left + right)]
        questions.append(_with_distractors(rng, f"What is {left} plus {right}?", str(left + right), pool))
    return questions


def read_questions(path: Path) -> list[Question]:
    """A user's multiple-choice set: JSONL rows {"question", "choices": [...], "answer": index or text}."""
    questions = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            choices = tuple(str(choice) for choice in row["choices"])
            answer = row["answer"]
            index = answer if isinstance(answer, int) else choices.index(str(answer))
            if not 0 <= index < len(choices) or len(choices) < 2:
                raise ValueError("answer index out of range or fewer than two choices")
            questions.append(Question(str(row["question"]), choices, index))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise DataError(
                path, f"expected {{'question', 'choices': [...], 'answer': index or choice}} ({error})", line=number
            ) from error
    if not questions:
        raise DataError(path, "no questions")
    return questions


def read_general_text(path: Path, lines: int) -> list[str]:
    if not Path(path).is_file():
        raise DataError(path, "general-domain text not found (one passage per line)")
    texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return texts[:lines]


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: list[str], batch_size: int = 16, max_length: int = 128) -> float:
    """exp(mean negative log-likelihood per token) over all texts (each starting with the BOS token if any)."""
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for start in range(0, len(texts), batch_size):
        encoded = [
            tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
            for text in texts[start : start + batch_size]
        ]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        log_probs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = input_ids[:, 1:].to(device)
        nll = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        valid = mask[:, 1:].to(device).bool()
        total_nll += float(nll[valid].sum())
        total_tokens += int(valid.sum())
    return math.exp(total_nll / max(total_tokens, 1))


@torch.no_grad()
def multiple_choice_accuracy(model: Any, tokenizer: Any, questions: list[Question], batch_size: int = 32) -> float:
    """Share of questions whose right choice has the highest mean log-probability per token."""
    device = next(model.parameters()).device
    rows: list[tuple[int, int, list[int], int]] = []  # question, choice, tokens, where the choice starts
    for position, question in enumerate(questions):
        prompt = tokenizer(f"Question: {question.question}\nAnswer:")["input_ids"]
        for choice_index, choice in enumerate(question.choices):
            choice_ids = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
            rows.append((position, choice_index, prompt + choice_ids, len(prompt)))
    scores = torch.full((len(questions), max(len(q.choices) for q in questions)), float("-inf"))
    # Left-padded, so every row's choice tokens sit at the end and only the last positions need logits.
    order = sorted(range(len(rows)), key=lambda index: len(rows[index][2]))
    for start in range(0, len(order), batch_size):
        batch = [rows[index] for index in order[start : start + batch_size]]
        width = max(len(tokens) for _, _, tokens, _ in batch)
        keep = max(len(tokens) - prompt_length for _, _, tokens, prompt_length in batch) + 1
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, tokens, _) in enumerate(batch):
            input_ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(device),
            logits_to_keep=keep,
        ).logits.float()
        log_probs = torch.log_softmax(logits, -1)  # position j predicts token width - keep + j + 1
        for row, (question, choice, tokens, prompt_length) in enumerate(batch):
            choice_length = len(tokens) - prompt_length
            targets = torch.tensor(tokens[prompt_length:], device=device)
            picked = log_probs[row, keep - 1 - choice_length : keep - 1].gather(-1, targets.unsqueeze(-1))
            scores[question, choice] = float(picked.mean())
    predictions = scores.argmax(dim=1).tolist()
    return sum(prediction == question.answer for prediction, question in zip(predictions, questions)) / len(questions)


@dataclass
class ProbeResult:
    perplexity: float | None
    accuracy: float


def probe(model: Any, tokenizer: Any, general_texts: list[str] | None, questions: list[Question]) -> ProbeResult:
    return ProbeResult(
        perplexity(model, tokenizer, general_texts) if general_texts else None,
        multiple_choice_accuracy(model, tokenizer, questions),
    )


def relative_change(before: float | None, after: float | None) -> float | None:
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before
