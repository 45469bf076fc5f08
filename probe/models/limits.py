"""What one forward can take: the model's position limit and the memory a sequence needs, checked before the forward.

A 100,000-character prompt once made capture allocate 10 GB (the T×T attention mask) before failing; each example's
tokenised length is now checked against these limits when its inputs are built, so it is refused (or skipped under
--skip-bad) in one line before any forward runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from probe.data.example import Example
from probe.models.base import BadExampleError, ModelAdapter, ModelInputs
from probe.segments import Segment

# config fields that hold a decoder's largest position, most common first (text config of the multimodal model)
_POSITION_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def max_positions(adapter: ModelAdapter) -> int | None:
    """The largest sequence the decoder was built for (its text config's `max_position_embeddings`), or None."""
    cfg = adapter.text_config
    for name in _POSITION_FIELDS:
        value = getattr(cfg, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def forward_bytes(adapter: ModelAdapter, n_tokens: int, rows: int = 1) -> int:
    """A lower bound on the peak memory of one forward over `rows` sequences of `n_tokens` tokens.

    Counts what grows fastest with length: the boolean [T, T] attention mask transformers builds, eager attention's
    [heads, T, T] weights (when the model runs eager), and the logits over the vocabulary at every position.
    Weights, activations [T, hidden] and the capture's own buffers come on top.
    """
    cfg = adapter.text_config
    item = next(adapter.model.parameters()).element_size()
    t = int(n_tokens)
    mask = t * t
    eager = adapter.num_heads * t * t * item if _attn_implementation(adapter) == "eager" else 0
    logits = t * int(getattr(cfg, "vocab_size", 0) or 0) * max(item, 4)  # logits are often upcast to float32
    return rows * (mask + eager + logits)


def _attn_implementation(adapter: ModelAdapter) -> str:
    for cfg in (adapter.model.config, adapter.text_config):
        impl = getattr(cfg, "_attn_implementation", None)
        if impl:
            return str(impl)
    return ""


def free_bytes(device: torch.device) -> int | None:
    """Memory free for a new allocation on `device` (CUDA: the driver's free memory; CPU: available RAM), or None."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            import psutil

            return int(psutil.virtual_memory().available)
        except ImportError:
            try:
                return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError):
                return None
    return None


def _device(adapter: ModelAdapter) -> torch.device:
    return next(adapter.model.parameters()).device


def check_fits(adapter: ModelAdapter, inputs: ModelInputs, *, free: int | None = None) -> None:
    """BadExampleError naming the first row of `inputs` longer than the model's positions or needing more memory for
    its forward than is free (`free`: bytes, default measured on the model's device); before any forward."""
    if getattr(adapter.model, "config", None) is None or next(adapter.model.parameters(), None) is None:
        return  # a stand-in model without a config (tests' oracles): nothing to check against
    lengths = (inputs.segments != int(Segment.PAD)).sum(-1).tolist()
    limit = max_positions(adapter)
    for example_id, n in zip(inputs.example_ids, lengths):
        if limit is not None and n > limit:
            raise BadExampleError(example_id, f"{n} tokens, more than the model's {limit} positions "
                                              "(max_position_embeddings): shorten the prompt")
    if not lengths:
        return
    need = forward_bytes(adapter, max(lengths), rows=len(lengths))
    free = free_bytes(_device(adapter)) if free is None else free
    if free is not None and need > free:
        longest = inputs.example_ids[lengths.index(max(lengths))] if inputs.example_ids else "?"
        raise BadExampleError(longest, f"{max(lengths)} tokens would need at least {_gib(need)} for one forward, "
                                       f"more than the {_gib(free)} free on {_device(adapter)}: shorten the prompt")


def check_examples_fit(adapter: ModelAdapter, examples: Sequence[Example]) -> None:
    """`check_fits` for each example on its own (its inputs built once, answer included); the first misfit raises."""
    for ex in examples:
        check_fits(adapter, adapter.build_inputs([ex], padding_side="right"))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
