"""POPE (issue 24): metric definitions on a hand-computed case, the negative sampling against its stated rule,
the Korean particle rule, and cluster-bootstrap intervals over images."""

from __future__ import annotations

import numpy as np
import pytest

from probe.analysis.stats import BootstrapConfig
from probe.data.example import Example
from probe.eval.pope import PopeConfig, _images, korean_particle, pope_examples, pope_scores, question, sample_questions


def test_korean_particle_follows_the_final_consonant() -> None:
    assert korean_particle("사각형") == "이"  # 형 ends in ㅇ (받침)
    assert korean_particle("원") == "이"  # ㄴ
    assert korean_particle("사과") == "가"  # 과: no 받침
    assert korean_particle("의자") == "가"
    assert korean_particle("cat") == "이(가)"  # not Hangul: both
    assert question("사과", "ko") == "이미지에 사과가 있습니까?"
    assert question("삼각형", "ko") == "이미지에 삼각형이 있습니까?"
    assert question("dog", "en") == "Is there a dog in the image?"


def _ex(i: int, objs: list[str], lang: str = "en") -> Example:
    return Example(f"x{i}-{lang}", f"img{i}.png", "q", "a", lang=lang, labels={"objects": objs}, group=f"img{i}")


def test_metrics_match_a_hand_computed_case() -> None:
    # 6 questions on 3 images: present = [T, T, T, F, F, F]; said yes = [T, T, F, T, F, F]
    # TP 2, FN 1, FP 1, TN 2: accuracy 4/6, precision 2/3, recall 2/3, F1 2/3, yes-ratio 3/6
    exs = [Example(f"q{k}", "i", "p", "yes", labels={"present": p}, group=f"img{k // 2}", question_type="random")
           for k, p in enumerate([True, True, True, False, False, False])]
    ds = pope_scores(exs, [True, True, False, True, False, False], PopeConfig(intervals=BootstrapConfig(n_boot=500)))
    got = {m: float(ds[m].sel(setting="random", lang="en")) for m in ("accuracy", "precision", "recall", "f1", "yes_ratio")}
    assert got == pytest.approx({"accuracy": 4 / 6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.5},
                                abs=1e-12)
    assert int(ds["n_units"].sel(setting="random", lang="en")) == 3
    lo, hi = float(ds["accuracy_low"].sel(setting="random", lang="en")), float(ds["accuracy_high"].sel(setting="random", lang="en"))
    assert 0 <= lo <= 4 / 6 <= hi <= 1 and hi - lo > 0  # resampling 3 images moves the accuracy


def test_negatives_follow_the_stated_rule() -> None:
    # frequency: a 4, b 3, c 2, d 1, e 1; co-occurrence with "d": c twice... built below
    imgs = [["a", "b"], ["a", "b"], ["a", "c"], ["a", "b", "c", "d"], ["e"]]
    images = _images([_ex(i, o) for i, o in enumerate(imgs)])
    pop = sample_questions(images, "popular", seed=0)
    # image 4 holds e: positives [e], one negative = the most frequent absent object, a
    assert [(o, p) for i, o, p in pop if i == 4] == [("e", True), ("a", False)]
    # image 2 holds a, c: two negatives, b (3 images) then d/e tie at 1 -> by name: d
    assert [o for i, o, p in pop if i == 2 and not p] == ["b", "d"]
    adv = sample_questions(images, "adversarial", seed=0)
    # image 2 (a, c): co-occurrence with a or c: b 3+1=4, d 1+1=2, e 0 -> b, d
    assert [o for i, o, p in adv if i == 2 and not p] == ["b", "d"]
    # image 4 (e): no co-occurrence with anything -> the popular order: a
    assert [o for i, o, p in adv if i == 4 and not p] == ["a"]
    # image 3 holds 4 objects: 3 positives drawn, 1 negative only (e is the one absent object)
    assert sum(p for i, o, p in adv if i == 3) == 3 and [o for i, o, p in adv if i == 3 and not p] == ["e"]
    rnd = sample_questions(images, "random", seed=0)
    assert rnd == sample_questions(images, "random", seed=0)  # exactly reproducible
    for i, objs in enumerate(imgs):
        neg = [o for j, o, p in rnd if j == i and not p]
        assert len(set(neg)) == len(neg) and not set(neg) & set(objs)  # absent objects, without replacement
    # the random draw is numpy's default_rng([seed, setting, image]).choice over the sorted absent objects
    absent = ["b", "d", "e"]
    k = np.random.default_rng([0, 0, 2]).choice(3, 2, replace=False)
    assert [o for i, o, p in rnd if i == 2 and not p] == [absent[j] for j in k]
    draws = {tuple(o for i, o, p in sample_questions(images, "random", seed=s) if i == 2 and not p) for s in range(20)}
    assert len(draws) > 1  # the seed matters


def test_questions_in_every_language_with_translated_names() -> None:
    exs = [Example("a-en", "i.png", "q", "x", lang="en", labels={"objects": ["circle"], "objects_ko": ["원"]}),
           Example("a-ko", "i.png", "q", "x", lang="ko", labels={"objects": ["circle"], "objects_ko": ["원"]}),
           Example("b-en", "j.png", "q", "x", lang="en", labels={"objects": ["square"], "objects_ko": ["사각형"]})]
    qs = pope_examples(exs, PopeConfig(settings=("popular",)))
    prompts = {(q.lang, q.labels["object"], q.labels["present"]): (q.prompt, q.answer) for q in qs if q.group == "i.png"}
    assert prompts[("ko", "circle", True)] == ("이미지에 원이 있습니까?", "예")
    assert prompts[("ko", "square", False)] == ("이미지에 사각형이 있습니까?", "아니요")
    assert prompts[("en", "square", False)] == ("Is there a square in the image?", "no")
    with pytest.raises(ValueError, match="labels.objects"):
        pope_examples([Example("z", "k.png", "q", "x")])
