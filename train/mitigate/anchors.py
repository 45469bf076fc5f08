"""Anchors: bilingual image–concept pairs whose projected visual tokens and concept-word embeddings VDC watches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from probe.data.example import Example
from probe.models.base import ModelAdapter


def anchor_examples(examples: Sequence[Example], lang: str, per_concept: int) -> list[Example]:
    """The first `per_concept` image-dependent examples in `lang` per distinct answer (the concept word), by id."""
    by_word: dict[str, list[Example]] = {}
    for ex in sorted(examples, key=lambda e: e.id):
        if ex.lang == lang and ex.image_dependent and ex.answer:
            group = by_word.setdefault(ex.answer, [])
            if len(group) < per_concept:
                group.append(ex)
    if len(by_word) < 2:
        raise ValueError(f"anchors: need >= 2 concepts with image-dependent {lang!r} examples, found {sorted(by_word)}")
    return [ex for word in sorted(by_word) for ex in by_word[word]]


class Anchors:
    """Projector outputs of the anchor images and the input embeddings of their concept words, under the current weights."""

    def __init__(self, adapter: ModelAdapter, examples: Sequence[Example], device: torch.device | str = "cpu") -> None:
        self.adapter = adapter
        self.batch = adapter.build_inputs([replace(ex, answer=None) for ex in examples], padding_side="right").to(device)
        self.words = sorted({ex.answer for ex in examples if ex.answer})
        tok = adapter.processor.tokenizer
        self.word_ids = [torch.tensor(tok(w, add_special_tokens=False)["input_ids"], device=device) for w in self.words]
        self._projector_args: tuple[tuple, dict] | None = None  # the projector's input, while the tower is frozen

    def projected(self, model: torch.nn.Module) -> torch.Tensor:
        """Every anchor image's visual tokens as the decoder receives them: [tokens, d] (vision + projector only).

        While the vision tower has no trainable parameter its output for the fixed anchor images never changes,
        so the projector's input is captured once and only the projector runs afterwards (the same values as
        a full vision pass, without it). A trainable tower is run every time.
        """
        frozen = not any(p.requires_grad for p in self.adapter.component_parameters("vision").values())
        projector = self.adapter.component("projector")
        if frozen and self._projector_args is not None:
            args, kwargs = self._projector_args
            return self._rows(projector(*args, **kwargs))
        run = self.adapter.run_to_projector(self.batch, model=model)  # vision + projector only
        args, kwargs = run.projector_in
        self._projector_args = ((tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                                 {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
                                if frozen else None)
        return self._rows(run.projector_out)

    def _rows(self, output) -> torch.Tensor:
        return torch.cat(self.adapter.visual_rows("projector.out", self.adapter.site_tensor("projector.out", output), self.batch))

    def word_embeddings(self) -> torch.Tensor:
        """Each concept word's input embedding (mean over its tokens; one token with a subword vocabulary): [words, d]."""
        table = self.adapter.component("embed").weight
        return torch.stack([table[ids].mean(0) for ids in self.word_ids])
