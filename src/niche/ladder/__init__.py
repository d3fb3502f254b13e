"""`niche ladder`: the decision ladder on one held-out set, with numbers.

Rungs, cheapest to build first: the stock base model, the base with retrieval (RAG), the fine-tuned
specialist, and the specialist with retrieval. Each is scored with the specialist's stored prompt on the same
test rows (label tasks decode within the label set, for every rung alike), timed for throughput (batched) and
latency (one request at a time), and costed per million tokens and per thousand requests from the measured
throughput and a configured hardware price. The recommendation is the cheapest rung that reaches the target
on the headline metric. Forgetting probes (general-text perplexity, everyday multiple-choice accuracy)
compare the base with the specialist. Everything lands in ladder.json, ladder.md and a self-contained
ladder.html with plots.
"""

from niche.ladder.report import ladder_html, ladder_markdown
from niche.ladder.results import RUNGS, LadderReport, Rung, recommend
from niche.ladder.run import engine_costs, run_ladder, write_ladder_report

__all__ = [
    "RUNGS",
    "LadderReport",
    "Rung",
    "engine_costs",
    "ladder_html",
    "ladder_markdown",
    "recommend",
    "run_ladder",
    "write_ladder_report",
]
