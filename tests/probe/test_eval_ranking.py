"""Ranking candidates from one shared prompt forward equals one full forward per candidate (the old way)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

import probe.eval.predict as predict
from probe.data.example import Example
from probe.eval.predict import answer_logprobs, candidate_logprobs, rank_choices


def _cases() -> tuple[list[Example], list[list[str]]]:
    """Prompts of different lengths (left padding in the shared path), K from 2 to 5, Korean and English answers."""
    exs = [Example(f"e{i}", Image.new("RGB", (32, 32), (30 * i % 255, 80, 200 - 20 * i)),
                   ("무슨 색?" if i % 2 else "What colour is it?") + " Answer briefly." * (i % 3), "red",
                   lang="ko" if i % 2 else "en")
           for i in range(7)]
    choices = [["red", "green", "blue", "yellow"], ["빨강", "초록"], ["red", "green", "blue"], ["직사각형", "원", "삼각형"],
               ["one", "two", "three", "four", "five"], ["left", "right"], ["circle", "square"]]
    return exs, choices


@pytest.mark.parametrize("batch_size", [3, 64])
def test_shared_prompt_logprobs_equal_full_forward(tiny_llava_adapter, monkeypatch, batch_size: int) -> None:
    """Oracle: the full-forward `answer_logprobs` on every (example, candidate); atol 1e-5 on summed log-probs
    of magnitude ~30 (float32 round-off of a different but equivalent computation)."""
    exs, choices = _cases()
    flat = [replace(ex, answer=c) for ex, cs in zip(exs, choices) for c in cs]
    expected = np.array(answer_logprobs(tiny_llava_adapter, flat, batch_size=4))

    def no_fallback(*args, **kwargs):
        raise AssertionError("fell back to one forward per candidate (KV-cache API moved?)")

    monkeypatch.setattr(predict, "answer_logprobs", no_fallback)
    got = candidate_logprobs(tiny_llava_adapter, exs, choices, batch_size=batch_size)
    assert [len(g) for g in got] == [len(c) for c in choices]
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=0, atol=1e-5)
    ranked = rank_choices(tiny_llava_adapter, exs, choices, batch_size=batch_size)
    assert ranked == [cs[int(np.argmax(g))] for cs, g in zip(choices, got)]


def test_mismatched_lengths_are_an_error(tiny_llava_adapter) -> None:
    exs, choices = _cases()
    with pytest.raises(ValueError, match="7 examples but 6 candidate lists"):
        candidate_logprobs(tiny_llava_adapter, exs, choices[:-1])


def test_chunks_hold_whole_examples() -> None:
    spans = predict._chunks([["a"] * 3, ["a"] * 5, ["a"] * 2, ["a"] * 2], rows=4)
    assert [list(s) for s in spans] == [[0], [1], [2, 3]]


def test_every_family_ranks_as_with_full_forwards(tiny_models, monkeypatch) -> None:
    """Each tiny family: shared-prompt scores equal full forwards (atol 1e-5 + rtol 1e-6: sums reach ~75 nats, where
    one float32 step is 7.6e-6), and every family takes the shared KV-cache path, M-RoPE ones (Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL) included: none builds full-vocabulary logits for every position."""
    from probe.models import adapter_for

    exs, choices = _cases()
    exs, choices = exs[:3], choices[:3]
    flat = [replace(ex, answer=c) for ex, cs in zip(exs, choices) for c in cs]
    shared = predict._shared_prefix_chunk
    for family in tiny_models:
        adapter = adapter_for(*tiny_models[family])
        used: list[bool] = []
        monkeypatch.setattr(predict, "_shared_prefix_chunk", lambda *a: (lambda r: used.append(r is not None) or r)(shared(*a)))
        got = np.concatenate(candidate_logprobs(adapter, exs, choices, batch_size=4))
        monkeypatch.setattr(predict, "_shared_prefix_chunk", shared)
        expected = np.array(answer_logprobs(adapter, flat, batch_size=4))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-5, err_msg=family)
        assert set(used) == {True}, family
