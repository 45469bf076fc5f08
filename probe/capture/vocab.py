"""The decoder's input-embedding matrix and decoded vocabulary, written once per store (group 'vocab').

Projector drift relative to the decoder's embedding space needs them, and analyses never read models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from probe.models.base import ModelAdapter
from probe.store import TraceStore

VOCAB_GROUP = "vocab"


def vocab_dataset(adapter: ModelAdapter, dtype: str = "float16") -> xr.Dataset:
    """embedding [vocab, feature] in `dtype` and token [vocab]: each id decoded on its own (tokenizer.decode([i]))."""
    weight = adapter.input_embeddings.weight.detach().float().cpu().numpy().astype(dtype)
    tokenizer = adapter.processor.tokenizer
    # ids past the tokenizer's range (padded embedding rows) decode to ''
    n_tok = len(tokenizer)
    tokens = [tokenizer.decode([i]) if i < n_tok else "" for i in range(weight.shape[0])]
    return xr.Dataset(
        {"embedding": (("vocab", "feature"), weight), "token": ("vocab", np.array(tokens, dtype=object).astype(str))},
        attrs={"description": "decoder input embeddings; token = tokenizer.decode([id])"},
    )


def write_vocab(adapter: ModelAdapter, store: str | Path, dtype: str = "float16") -> None:
    """Write the 'vocab' group into an existing store (replacing one already there), through the store's writer."""
    TraceStore.open(store).write_group(VOCAB_GROUP, vocab_dataset(adapter, dtype), {"dtype": dtype})
