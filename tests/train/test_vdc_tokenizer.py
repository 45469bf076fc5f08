"""The organism's subword vocabulary: concept words are single tokens, any text still round-trips, special ids stay."""

from __future__ import annotations

import pytest

from probe.data.manifest import read_manifest
from probe.data.synth import COLOURS, SHAPES, SynthConfig, answer_word, generate
from probe.testing import build_byte_tokenizer
from train.organism import N_BASE_TOKENS, OrganismConfig, corpus, subword_tokenizer


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    m = generate(tmp_path_factory.mktemp("synth"), seed=0, config=SynthConfig(
        stage1_scenes=60, stage1_text_scenes=8, stage2_examples=120, eval_scenes=1, eval_text_scenes=0, eval_text_answerable=1))
    examples = read_manifest(m["stage1_train"]) + read_manifest(m["stage2_train"])
    byte = build_byte_tokenizer(("<image>",))
    return byte, subword_tokenizer(corpus(examples), byte, 1024)


@pytest.mark.parametrize("lang", ["en", "ko"])
def test_concept_words_are_single_tokens(tokenizers, lang) -> None:
    _, tok = tokenizers
    words = [answer_word(lang, "colour", c) for c in COLOURS] + [answer_word(lang, "shape", s) for s in SHAPES]
    ids = {w: tok(w, add_special_tokens=False)["input_ids"] for w in words}
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({v[0] for v in ids.values()}) == len(words)  # distinct tokens, not shared bytes


@pytest.mark.parametrize("text", ["처음 보는 문장입니다 🙂", "unseen Zebra?", "<image>\n무슨 색?", "빨강"])
def test_byte_fallback_round_trips(tokenizers, text) -> None:
    _, tok = tokenizers
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text


def test_bytes_and_special_ids_unchanged(tokenizers) -> None:
    byte, tok = tokenizers
    base = byte.get_vocab()
    vocab = tok.get_vocab()
    assert all(vocab[t] == i for t, i in base.items())
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (byte.bos_token_id, byte.eos_token_id, byte.pad_token_id)
    assert N_BASE_TOKENS < len(tok) <= 1024
    # a Hangul word the corpus never saw is spelled from bytes and byte-pair pieces, not one token
    ids = tok("햇살", add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 and tok.decode(ids) == "햇살"


def test_vocab_size_validated() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        OrganismConfig(vocab_size=100)
    assert OrganismConfig(vocab_size=0).vocab_size == 0  # bytes only, as before
