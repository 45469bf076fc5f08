"""VDC, its ablations and the baselines as recipes of one format, all on the same data, steps and seed."""

from __future__ import annotations

from dataclasses import dataclass

from train.mitigate.config import MitigateConfig, ProjectorStage

# Untuned defaults, fixed before any run: λ3 and VIRAL's head follow VIRAL (weight 0.5, middle layer);
# λ1, λ2, α, margin 1 nat and β = 2 are round values from the proposal's description, not searched.
VDC_TERMS = dict(drift_weight=1.0, contrast_weight=0.5, contrast_margin=1.0, align_weight=0.5, align_alpha=1.0,
                 projector_beta=2.0)


@dataclass(frozen=True)
class RecipeData:
    """The manifests every recipe shares.

    train: the target-language fine-tune (Korean text-answerable for the organism); image: a small
    image-dependent set (projector stages); anchors: image–concept pairs (anchor_lang answers are the
    concept words); replay: base-language data mixed into English replay.
    """

    model: str
    train: str
    image: str
    anchors: str
    replay: str
    rank_store: str | None = None
    anchor_lang: str = "ko"


def recipes(data: RecipeData, *, steps: int, seed: int = 0, batch_size: int = 32, lr: float = 3e-4, lora_r: int = 8,
            projector_steps: int = 50, replay_fraction: float = 0.25, ablations: bool = True,
            **common) -> dict[str, MitigateConfig]:
    """name -> recipe: plain_lora (the reference), full_ft, viral, vision_unfrozen, replay, staged, posthoc, vdc
    and, with `ablations`, vdc minus each term (and with uniform ranks when `data.rank_store` is given).

    full_ft trains decoder and projector (vision frozen); vision_unfrozen trains everything.
    """
    base = MitigateConfig(name="plain_lora", model=data.model, train_manifest=data.train, seed=seed, lr=lr,
                          batch_size=batch_size, max_steps=steps, lora_r=lora_r, lora_alpha=2 * lora_r,
                          freeze=("vision",), **common)
    stage = ProjectorStage(manifest=data.image, steps=projector_steps, lr=1e-3)
    anchors = dict(anchor_manifest=data.anchors, anchor_lang=data.anchor_lang)
    ranks = dict(lora_ranks="modality", rank_store=data.rank_store) if data.rank_store else {}
    vdc = base.replace(name="vdc", **VDC_TERMS, **anchors, **ranks)
    out = {
        "plain_lora": base,
        "full_ft": base.replace(name="full_ft", lora_r=0, lr=lr / 3),
        "viral": base.replace(name="viral", align_weight=VDC_TERMS["align_weight"]),
        "vision_unfrozen": base.replace(name="vision_unfrozen", lora_r=0, freeze=(), lr=lr / 3),
        "replay": base.replace(name="replay", replay_manifest=data.replay, replay_fraction=replay_fraction),
        "staged": base.replace(name="staged", pre=stage),
        "posthoc": base.replace(name="posthoc", post=stage),
        "vdc": vdc,
    }
    if ablations:
        out["vdc-no_drift"] = vdc.replace(name="vdc-no_drift", drift_weight=0.0)
        out["vdc-no_contrast"] = vdc.replace(name="vdc-no_contrast", contrast_weight=0.0)
        out["vdc-no_align"] = vdc.replace(name="vdc-no_align", align_weight=0.0)
        out["vdc-no_projector_lora"] = vdc.replace(name="vdc-no_projector_lora", projector_beta=0.0)
        if ranks:
            out["vdc-uniform_ranks"] = vdc.replace(name="vdc-uniform_ranks", lora_ranks="uniform", rank_store=None)
    return out
