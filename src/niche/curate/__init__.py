"""`niche curate`: clean, deduplicate, resolve conflicts, redact PII and split, losing nothing.

Stages, in order, over the canonical examples of every input file:
1. normalise (Unicode NFC, whitespace) and drop empty or over-long rows;
2. optionally redact PII (counted per kind);
3. exact duplicates (same normalised input and output);
4. near-same inputs (MinHash LSH over word shingles, `niche.data.minhash`): with the same output they are near
   duplicates (the first is kept); with different outputs they are conflicts, resolved by `majority`, `drop`
   or `keep`;
5. stratified, seeded train/validation/test splits (per label; unlabelled rows in runs of input rows);
6. `--decontaminate FILE`: training rows sharing a word n-gram (13 by default, as in GPT-3) with a benchmark;
7. a leakage check: no validation or test row may be an exact or near duplicate of a training row.
Every dropped row goes to rejects.jsonl with its stage and reason; a data card (markdown and JSON) counts
each stage.

Two engines make the same decisions (`rules`): `local`, one process, and `ray`, Ray Data over a cluster, whose
driver holds no per-row state (the `scale` extra).
"""

from __future__ import annotations

from pathlib import Path

from niche.config import CurateSettings
from niche.curate.card import CurateReport, data_card_markdown
from niche.curate.rules import Reject, example_row, normalize_text
from niche.errors import ConfigError, require_extra

ENGINES = ("local", "ray")

__all__ = [
    "ENGINES",
    "CurateReport",
    "CurateSettings",
    "Reject",
    "curate",
    "data_card_markdown",
    "example_row",
    "normalize_text",
]


def curate(inputs: list[Path], out_dir: Path, settings: CurateSettings | None = None) -> CurateReport:
    """Run every stage and write train/validation/test.jsonl, rejects.jsonl, data_card.{json,md} atomically,
    on the engine `settings.engine` names."""
    settings = settings or CurateSettings()
    require_extra("train", ("scipy",), "curate (near-duplicate clustering)")
    if not inputs:
        raise ConfigError("curate: give at least one input file")
    report = CurateReport(
        [str(path) for path in inputs], {key: str(value) for key, value in settings.model_dump().items()}
    )
    if settings.engine == "ray":
        require_extra("scale", ("ray",), "curate --engine ray")
        # Ray loads only when chosen: the local engine never needs it.
        from niche.curate.ray_engine import curate_on_ray

        return curate_on_ray(inputs, out_dir, settings, report)
    from niche.curate.local import curate_locally  # the local engine's numpy and scipy work, when it runs

    return curate_locally(inputs, out_dir, settings, report)
