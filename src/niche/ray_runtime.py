"""Running a stage on Ray: joining the cluster, Ray Data's settings, and niche's errors surfacing as themselves.

Imported only by the Ray engines of the stages (`curate --engine ray`, `eval --engine ray`), which load only when
chosen: ray is the `scale` extra's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray
import ray.data
from ray.data.context import ShuffleStrategy

from niche.errors import NicheError


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """Join the cluster at `address` (or start a local Ray) unless this process already has one; with niche's
    Ray Data settings, and a niche error raised on a worker re-raised as itself."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, log_to_driver=False, include_dashboard=False)
    try:
        with _sort_based_shuffles(), _niche_errors():
            yield
    finally:
        if started:
            ray.shutdown()


def cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@contextmanager
def _sort_based_shuffles() -> Iterator[None]:
    """Shuffles as tasks (sort-based, pull) rather than Ray Data's default hash shuffle, whose aggregator actors
    cost seconds to start per shuffle: measured on 3,000 rows on 2 CPUs, a whole curate run took 6.7 s against
    35 s, same output. Restored afterwards for whatever else this process runs on Ray."""
    context = ray.data.DataContext.get_current()
    previous = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = previous


@contextmanager
def _niche_errors() -> Iterator[None]:
    """A niche error raised on a worker (a bad input file) surfaces as itself, not wrapped by Ray."""
    try:
        yield
    except NicheError:
        raise
    except Exception as error:
        cause: BaseException | None = error
        while cause is not None:
            if isinstance(cause, NicheError):
                raise cause from None
            cause = cause.__cause__ or getattr(cause, "cause", None)
        raise
