"""Idefics3 and SmolVLM: SigLIP → pixel-shuffle + linear connector → Llama decoder, with tiled images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from probe.data.example import Example
from probe.models._inputs import answer_ids, assemble, load_image, prompt_text, segments_from_ids
from probe.models.base import BadExampleError, ModelAdapter, ModelInputs
from probe.models.registry import register_adapter
from probe.segments import Segment

FAKE = "<fake_token_around_image>"


@register_adapter
class Idefics3Adapter(ModelAdapter):
    """Each tile is `<fake>` + tag (`<row_i_col_j>` or `<global-img>`) + `<image>`×N, closed by a last `<fake>`.

    Segments: `<image>` is VISUAL, the first fake token IMAGE_START, the last IMAGE_END, and everything
    between them that is not an image token (tile tags, inner fake tokens, row newlines) IMAGE_SEP.
    """

    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    sites = {
        "vision.out": "model.vision_model",
        "projector.in": "model.connector",
        "projector.out": "model.connector",
        "lm.layer.{i}.resid": "model.text_model.layers.{i}",
        "lm.layer.{i}.attn": "model.text_model.layers.{i}.self_attn",
    }

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.get_submodule("model.text_model.layers")

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)

    def _segments(self, ids: list[int]) -> list[int]:
        segs = segments_from_ids(ids, {self.image_token_id: Segment.VISUAL})
        fake = self.processor.tokenizer.convert_tokens_to_ids(getattr(self.processor, "fake_image_token", FAKE))
        fakes = [i for i, t in enumerate(ids) if t == fake]
        if len(fakes) >= 2:
            first, last = fakes[0], fakes[-1]
            for i in range(first + 1, last):
                if segs[i] != Segment.VISUAL:
                    segs[i] = int(Segment.IMAGE_SEP)
            segs[first], segs[last] = int(Segment.IMAGE_START), int(Segment.IMAGE_END)
        return segs

    def build_inputs(self, examples: Sequence[Example], padding_side: str = "left") -> ModelInputs:
        tokenizer = self.processor.tokenizer
        placeholder = getattr(self.processor, "image_token", "<image>")
        prompts, segments, answers, pixels, masks = [], [], [], [], []
        for ex in examples:
            image = load_image(ex)
            text = prompt_text(self.processor, ex, placeholder)
            try:
                enc = self.processor(images=[[image]], text=[text], return_tensors="pt")
            except ValueError as err:
                raise BadExampleError(ex.id, f"processor refused the input: {str(err).splitlines()[0]}") from None
            ids = enc["input_ids"][0].tolist()
            if self.image_token_id not in ids:
                raise BadExampleError(ex.id, "no image tokens after processing")
            prompts.append(ids)
            segments.append(self._segments(ids))
            answers.append(answer_ids(tokenizer, ex.answer))
            pixels.append(enc["pixel_values"])
            if "pixel_attention_mask" in enc:
                masks.append(enc["pixel_attention_mask"])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # tile counts differ with image splitting: all-zero padding tiles are dropped by the model
        extra = {"pixel_values": _pad_tiles(pixels)}
        if masks:
            extra["pixel_attention_mask"] = _pad_tiles(masks)
        batch = assemble(examples, prompts, segments, answers, pad, padding_side, extra)
        mask = batch.inputs["attention_mask"]
        # positions count real tokens only, so left and right padding give the same RoPE phases
        batch.inputs["position_ids"] = (mask.cumsum(-1) - 1).clamp_min(0)
        return batch


def _pad_tiles(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate [1, tiles, ...] tensors along the batch, zero-padding the tile axis to the longest."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        if t.shape[1] < width:
            t = torch.cat([t, t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))], dim=1)
        out.append(t)
    return torch.cat(out)
