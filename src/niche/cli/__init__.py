"""The `niche` command: one sub-command per pipeline stage, each a thin wrapper over a library function.

Commands live in modules by what they work on (`data`, `training`, `serving`, `flows`); importing this package
registers them all on `app`.
"""

from __future__ import annotations

from niche.cli.app import app, run

# Registration order is the order `niche --help` lists the commands in: the pipeline's.
# isort: off
from niche.cli import data, training, serving, flows
# isort: on

__all__ = ["app", "data", "flows", "run", "serving", "training"]
