"""Input-side ablations (what the model is shown) and visual-token ablation at the decoder input."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from interventions.base import Intervention, register_intervention
from probe.data.example import Example
from probe.eval import mismatch_partners
from probe.models.base import ModelAdapter, ModelInputs

IMAGE_ABLATIONS: tuple[str, ...] = ("blank", "mean", "noise", "shuffle", "other")
TOKEN_ABLATIONS: tuple[str, ...] = ("zero", "mean", "noise")


def open_image(ex: Example) -> Image.Image:
    """The example's image as RGB (opened from its path when needed)."""
    if isinstance(ex.image, Image.Image):
        return ex.image.convert("RGB")
    if ex.image is None:
        raise ValueError(f"example {ex.id!r}: no image")
    with Image.open(ex.image) as im:
        return im.convert("RGB")


def mean_image(images: Sequence[Image.Image], size: tuple[int, int]) -> Image.Image:
    """Pixel-wise mean of `images` resized to `size` (width, height)."""
    if not images:
        raise ValueError("mean_image: no images")
    acc = np.zeros((size[1], size[0], 3), dtype=np.float64)
    for im in images:
        acc += np.asarray(im.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float64)
    return Image.fromarray(np.round(acc / len(images)).astype(np.uint8))


def shuffle_patches(image: Image.Image, grid: int, rng: random.Random) -> Image.Image:
    """The image cut into grid × grid patches, placed back in a random order (sizes not divisible are cropped)."""
    w, h = image.size
    pw, ph = w // grid, h // grid
    if pw == 0 or ph == 0:
        raise ValueError(f"shuffle_patches: a {w}x{h} image has no {grid}x{grid} grid")
    boxes = [(c * pw, r * ph, (c + 1) * pw, (r + 1) * ph) for r in range(grid) for c in range(grid)]
    order = list(range(len(boxes)))
    rng.shuffle(order)
    out = image.copy()
    for dst, src in zip(boxes, order):
        out.paste(image.crop(boxes[src]), dst[:2])
    return out


def ablate_examples(
    examples: Sequence[Example],
    kind: str,
    *,
    seed: int = 0,
    grid: int = 4,
    blank_color: tuple[int, int, int] = (0, 0, 0),
) -> list[Example]:
    """The examples with their image replaced: blank (one colour), mean (the set's mean image), noise (uniform
    pixel noise), shuffle (patches of a grid × grid cut permuted), other (another example's image with the same
    language and question type but a different answer, as the mismatched condition of `probe.eval`)."""
    if kind not in IMAGE_ABLATIONS:
        raise ValueError(f"unknown image ablation {kind!r}; choose from {', '.join(IMAGE_ABLATIONS)}")
    examples = list(examples)
    images = [open_image(ex) for ex in examples]
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    if kind == "blank":
        new = [Image.new("RGB", im.size, blank_color) for im in images]
    elif kind == "mean":
        size = images[0].size if images else (1, 1)
        avg = mean_image(images, size)
        new = [avg.resize(im.size, Image.BILINEAR) for im in images]
    elif kind == "noise":
        new = [Image.fromarray(nprng.integers(0, 256, (im.size[1], im.size[0], 3), dtype=np.uint8)) for im in images]
    elif kind == "shuffle":
        new = [shuffle_patches(im, grid, rng) for im in images]
    else:
        partners = mismatch_partners(examples, seed)
        new = [images[j if j is not None else (i + 1) % len(images)] for i, j in enumerate(partners)]
    return [replace(ex, image=im, condition=kind) for ex, im in zip(examples, new)]


def diffusion_noise(pixels: torch.Tensor, step: int = 500, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """VCD's distortion (Leng et al., CVPR 2024): forward diffusion q(x_t | x_0) at `step` of 1000, on the
    processor's pixel tensor; betas = sigmoid(linspace(-6, 6, 1000)) · (0.5e-2 - 1e-5) + 1e-5, as their code."""
    if not 0 <= step < 1000:
        raise ValueError(f"diffusion step must be in [0, 1000), got {step}")
    betas = torch.sigmoid(torch.linspace(-6, 6, 1000, dtype=torch.float64)) * (0.5e-2 - 1e-5) + 1e-5
    alpha_bar = torch.cumprod(1 - betas, 0)[step]
    noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32).to(pixels.device, pixels.dtype)
    return (alpha_bar.sqrt() * pixels + (1 - alpha_bar).sqrt() * noise).to(pixels.dtype)


@register_intervention
class VisualTokenAblation(Intervention):
    """Replace the projected visual tokens (the decoder's visual inputs) of a random `fraction` of them:
    zero, a dataset mean vector (`mean`, [d]; see `visual_token_mean`), or Gaussian noise at each token's own
    scale (its mean and standard deviation over features). Seeded: the same seed ablates the same tokens."""

    name = "visual_tokens"

    def __init__(self, adapter: ModelAdapter, mode: str = "zero", *, fraction: float = 1.0, mean: torch.Tensor | None = None,
                 seed: int = 0) -> None:
        if mode not in TOKEN_ABLATIONS:
            raise ValueError(f"unknown visual-token ablation {mode!r}; choose from {', '.join(TOKEN_ABLATIONS)}")
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if mode == "mean" and mean is None:
            raise ValueError("visual-token ablation 'mean' needs the mean vector (visual_token_mean(adapter, examples))")
        super().__init__()
        self.adapter, self.mode, self.fraction, self.mean, self.seed = adapter, mode, float(fraction), mean, seed
        self._segments: torch.Tensor | None = None

    @property
    def is_noop(self) -> bool:
        return self.fraction == 0

    def set_batch(self, batch: ModelInputs) -> None:
        self._segments = batch.segments

    def _replace(self, rows: torch.Tensor) -> torch.Tensor:
        """The batch's visual tokens `[n, d]` in decoder order, a seeded `fraction` of them replaced."""
        g = torch.Generator().manual_seed(self.seed)
        chosen = (torch.rand(rows.shape[0], generator=g) < self.fraction).to(rows.device) if self.fraction < 1 else None
        if self.mode == "zero":
            new = torch.zeros_like(rows)
        elif self.mode == "mean":
            new = self.mean.to(rows.device, rows.dtype).expand_as(rows)
        else:
            f = rows.float()
            z = torch.randn(rows.shape, generator=g).to(rows.device)
            new = (f.mean(-1, keepdim=True) + f.std(-1, keepdim=True) * z).to(rows.dtype)
        if chosen is not None:
            new = torch.where(chosen[:, None], new, rows)
        return new

    def _install(self) -> Callable[[], None]:
        # at the decoder's input, where the rows are the visual tokens in decoder order (anyres unpadding,
        # mergers and tile layouts done): the projector's raw output is not that for every family
        return self.adapter.edit_visual_tokens(self._replace, lambda: self._segments)


@torch.no_grad()
def visual_token_mean(adapter: ModelAdapter, examples: Sequence[Example], *, batch_size: int = 16) -> torch.Tensor:
    """The mean projected visual token over `examples` (the rows the decoder receives): [d] float32."""
    total, count = None, 0
    device = next(adapter.model.parameters()).device
    for start in range(0, len(examples), batch_size):
        chunk = [replace(ex, answer=None) for ex in examples[start : start + batch_size]]
        rows = torch.cat(adapter.visual_tokens(adapter.build_inputs(chunk).to(device))).float()
        total = rows.sum(0) if total is None else total + rows.sum(0)
        count += rows.shape[0]
    if not count:
        raise ValueError("visual_token_mean: no visual tokens")
    return total / count
