"""The model organism: a tiny LLaVA that learns to use the image, then a Korean fine-tune that may make it blind."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from probe.data.example import Example
from probe.data.manifest import read_manifest
from probe.data.synth import SynthConfig, generate
from probe.eval.normalise import answers_match
from probe.eval.predict import rank_choices
from probe.models.loading import save_processor
from train.sft.config import SFTConfig
from train.sft.loop import StopTraining, sft

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position", "text")
N_BASE_TOKENS = 260  # tiny_llava's byte tokenizer: 256 bytes, <s>, </s>, <pad>, <image>
MARKER = ".visblind-organism"  # written first into a folder build_organism owns; other folders are refused


@dataclass(frozen=True)
class OrganismConfig:
    """Recipe of the organism: data sizes, question types, and the two SFT stages."""

    # Colour only: in trials, mixing shape/position/count/text questions left the model ignoring the
    # image after 600 steps (answer priors first), while colour alone is learned within ~200 steps.
    question_types: tuple[str, ...] = ("colour",)
    # Each stage trains until its held-out accuracy reaches its target at `patience` consecutive checks
    # (every `check_every` steps), at most stageN_steps steps. Held out: the last `holdout` images of stage 1 (both languages) and the
    # last `holdout` questions of stage 2, never trained on. The tests assert 0.95 on the eval sets: the
    # 0.99 targets leave that margin for other processors and thread counts.
    stage1_target: float = 0.99
    stage1_steps: int = 1500
    stage1_lr: float = 1e-3
    stage2_target: float = 0.99
    stage2_steps: int = 1000
    stage2_lr: float = 3e-4
    check_every: int = 25
    patience: int = 3  # the target must hold at this many consecutive checks (one lucky check is not a fit)
    holdout: int = 100
    batch_size: int = 32
    threads: int = 0  # 0: chosen from the cores free when training starts (free_threads), at most 2
    # Subword vocabulary trained on the organism's corpus (0 = the byte-level tokenizer of probe.testing.families):
    # with bytes only, every Hangul word is a mean of shared UTF-8 byte embeddings (issue 12).
    vocab_size: int = 1024
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        bad = [q for q in self.question_types if q not in QUESTION_TYPES]
        if bad or not self.question_types:
            raise ValueError(f"OrganismConfig.question_types: unknown {bad} (choose from {QUESTION_TYPES})")
        if min(self.stage1_steps, self.stage2_steps, self.batch_size, self.check_every, self.holdout, self.patience) < 1:
            raise ValueError("OrganismConfig: steps, batch_size, check_every, patience and holdout must be >= 1")
        if self.threads < 0:
            raise ValueError(f"OrganismConfig.threads must be >= 0 (0 = from the free cores), got {self.threads}")
        if not (0 < self.stage1_target <= 1 and 0 < self.stage2_target <= 1):
            raise ValueError("OrganismConfig: stage targets must be in (0, 1]")
        if self.vocab_size and self.vocab_size <= N_BASE_TOKENS:
            raise ValueError(f"OrganismConfig.vocab_size must be 0 (bytes only) or > {N_BASE_TOKENS}, got {self.vocab_size}")
        if not (self.stage1_lr > 0 and self.stage2_lr > 0):
            raise ValueError("OrganismConfig: learning rates must be > 0")
        object.__setattr__(self, "question_types", tuple(self.question_types))


@dataclass
class OrganismResult:
    """Paths and timings of a built organism."""

    base: Path
    ko_ft: Path
    manifests: dict[str, Path]
    seconds: dict[str, float]
    stages: dict[str, dict] = field(default_factory=dict)


def build_organism(
    out_dir: str | Path, *, seed: int = 0, config: OrganismConfig | None = None, progress: bool = True
) -> OrganismResult:
    """Generate the synthetic data, train stage 1 -> out_dir/base and stage 2 -> out_dir/ko_ft.

    Each stage trains to its held-out accuracy target (OrganismConfig), at most its step cap.
    `out_dir` must be new, empty, or an organism folder made here (anything else is refused, nothing touched).
    """
    from probe.models.registry import adapter_for
    from probe.testing.families import tiny_llava

    cfg = config or OrganismConfig()
    out = Path(out_dir)
    claim_folder(out)
    (out / "organism.json").unlink(missing_ok=True)  # written last: its presence marks a finished organism
    threads = cfg.threads or free_threads()
    torch.set_num_threads(threads)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    manifests = generate(out / "data", seed=seed, config=cfg.synth)
    seconds["data"] = time.perf_counter() - t
    model, processor = tiny_llava(seed)
    keep = set(cfg.question_types)
    stage1 = [e for e in read_manifest(manifests["stage1_train"]) if e.question_type in keep]
    stage2 = [e for e in read_manifest(manifests["stage2_train"]) if e.question_type in keep]
    stage1, held1 = split_holdout(stage1, cfg.holdout, by_image=True)
    stage2, held2 = split_holdout(stage2, cfg.holdout, by_image=False)
    if cfg.vocab_size:
        processor.tokenizer = subword_tokenizer(corpus(stage1 + stage2), processor.tokenizer, cfg.vocab_size)
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    adapter = adapter_for(model, processor)
    common = dict(batch_size=cfg.batch_size, threads=threads, seed=seed, device="cpu",
                  checkpoint_every=10**9, log_every=10)
    runs = out / "runs"
    stages: dict[str, dict] = {}
    target = dict(every=cfg.check_every, patience=cfg.patience, progress=progress)
    t = time.perf_counter()
    stages["stage1"] = train_to_target(adapter, stage1, held1, SFTConfig(lr=cfg.stage1_lr, max_steps=cfg.stage1_steps,
                                       **common), runs / "stage1", target=cfg.stage1_target, **target)
    seconds["stage1"] = time.perf_counter() - t
    base = _publish(runs / "stage1" / "final", out / "base")
    t = time.perf_counter()
    stages["stage2"] = train_to_target(adapter, stage2, held2, SFTConfig(lr=cfg.stage2_lr, max_steps=cfg.stage2_steps,
                                       **common), runs / "stage2", target=cfg.stage2_target, **target)
    seconds["stage2"] = time.perf_counter() - t
    ko_ft = _publish(runs / "stage2" / "final", out / "ko_ft")
    record = {"seed": seed, "seconds": seconds, "threads": threads, "stages": stages, "config": asdict(cfg),
              "manifests": {k: str(v.relative_to(out)) for k, v in manifests.items()}}
    (out / "organism.json").write_text(json.dumps(record, indent=1, default=str))
    return OrganismResult(base, ko_ft, manifests, seconds, stages)


def claim_folder(out: Path) -> None:
    """Make `out` an organism folder: refuse (one line, nothing touched) a folder with files not made here."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder; choose a new or empty folder for the organism")
    if out.is_dir() and any(out.iterdir()) and not ((out / MARKER).is_file() or (out / "organism.json").is_file()):
        raise ValueError(f"{out}: not an organism folder (no {MARKER}) and not empty; its files would be overwritten "
                         "- choose a new or empty folder (nothing was changed)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by train.organism.build_organism; its subfolders are overwritten on rebuild\n")


def free_threads(cap: int = 2) -> int:
    """Torch threads for training: the cores this process may use minus the load already on them, 1..cap.

    Two threads contending with a busy core run far slower than one (issue 23: 2.3 vs 0.11 s/step).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(cap, cores, int(cores - busy + 0.5)))


def split_holdout(examples: list[Example], n: int, *, by_image: bool) -> tuple[list[Example], list[Example]]:
    """(train, held out): the last `n` images' examples (by_image) or the last `n` examples, in file order."""
    if not by_image:
        return (examples[:-n], examples[-n:]) if len(examples) > n else (examples, [])
    images = list(dict.fromkeys(str(e.image) for e in examples))
    held = set(images[-n:]) if len(images) > n else set()
    return [e for e in examples if str(e.image) not in held], [e for e in examples if str(e.image) in held]


def heldout_accuracy(adapter, examples: Sequence[Example], choices_from: Sequence[Example]) -> dict[str, float]:
    """Accuracy per language on `examples`, ranking every answer of its (lang, question type) in `choices_from`."""
    answers: dict[tuple[str, str], list[str]] = {}
    for e in choices_from:
        answers.setdefault((e.lang, e.question_type), [])
        if e.answer not in answers[(e.lang, e.question_type)]:
            answers[(e.lang, e.question_type)].append(e.answer)
    choices = [answers[(e.lang, e.question_type)] for e in examples]
    was_training = adapter.model.training
    adapter.model.eval()
    with torch.no_grad():
        predicted = rank_choices(adapter, examples, choices, batch_size=64)
    adapter.model.train(was_training)
    hits: dict[str, list[bool]] = {}
    for e, p in zip(examples, predicted):
        hits.setdefault(e.lang, []).append(answers_match(p, e.answer, e.lang))
    return {lang: sum(h) / len(h) for lang, h in sorted(hits.items())}


def train_to_target(adapter, examples: list[Example], heldout: list[Example], config: SFTConfig, out_dir: Path, *,
                    target: float, every: int, patience: int = 1, progress: bool = True,
                    measure: Callable[[], dict[str, float]] | None = None) -> dict:
    """sft until every language's held-out accuracy is >= target at `patience` consecutive checks (one every
    `every` steps), at most max_steps steps.

    Writes out_dir/final like sft. Returns {"steps", "reached", "accuracy", "checks"}.
    """
    measure = measure or (lambda: heldout_accuracy(adapter, heldout, examples + heldout))
    checks: list[dict] = []

    def check(step: int, loss: float) -> None:
        if step % every or not heldout:
            return
        acc = measure()
        checks.append({"step": step, **{k: round(v, 4) for k, v in acc.items()}, "met": min(acc.values()) >= target})
        if len(checks) >= patience and all(c["met"] for c in checks[-patience:]):
            raise _Reached(step)

    reached = False
    try:
        result = sft(adapter, examples, config, out_dir, resume=False, callback=check, progress=progress)
        steps = result.steps
    except _Reached as stop:  # the model trained in place; save it as sft's final would be
        reached, steps = True, stop.step
        final = Path(out_dir) / "final"
        adapter.model.eval()
        adapter.model.save_pretrained(final, safe_serialization=True)
        save_processor(adapter.processor, final)
        (final / "sft_config.json").write_text(json.dumps({**asdict(config), "max_steps": steps}, indent=1))
    accuracy = {k: v for k, v in checks[-1].items() if k not in ("step", "met")} if checks else {}
    return {"steps": steps, "reached": reached, "target": target, "accuracy": accuracy, "checks": checks}


class _Reached(StopTraining):
    """Raised from sft's callback once the held-out target is met (the model is saved by train_to_target)."""

    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def corpus(examples: list[Example]) -> list[str]:
    """The texts the organism reads and writes: every prompt and every answer (answers alone, as tokenised)."""
    return [t for ex in examples for t in (ex.prompt, ex.answer) if t]


def subword_tokenizer(texts: list[str], byte_tokenizer, vocab_size: int):
    """Byte-level BPE trained on `texts` with the `tokenizers` library, ids 0..259 as in `byte_tokenizer`.

    The 256 byte tokens stay (byte fallback: any text still round-trips) and keep their ids, as do
    <s>, </s>, <pad> and <image>; learned merges follow from id 260. Pre-tokenisation splits words
    (GPT-2 regex), so a frequent word such as a Korean colour name becomes one token.
    """
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    def pre() -> pre_tokenizers.ByteLevel:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)

    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - N_BASE_TOKENS + 256, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    learner.train_from_iterator(texts, trainer)
    learned = json.loads(learner.to_str())["model"]
    base = byte_tokenizer.get_vocab()
    if sorted(base.values()) != list(range(N_BASE_TOKENS)):
        raise ValueError(f"subword_tokenizer: expected the {N_BASE_TOKENS}-token byte tokenizer of probe.testing.families")
    vocab = dict(base)
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre()
    tok.decoder = decoders.ByteLevel()
    named = {byte_tokenizer.bos_token, byte_tokenizer.eos_token, byte_tokenizer.pad_token}
    specials = [t for t in sorted(base, key=base.get)[256:] if t not in named]  # <image>
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=byte_tokenizer.bos_token,
                                   eos_token=byte_tokenizer.eos_token, pad_token=byte_tokenizer.pad_token)
    fast.add_special_tokens({"additional_special_tokens": specials})
    moved = {t: (base[t], fast.convert_tokens_to_ids(t)) for t in (fast.bos_token, fast.eos_token, fast.pad_token, *specials)}
    if any(a != b for a, b in moved.values()):
        raise ValueError(f"subword_tokenizer: special token ids moved {moved}")
    return fast


def existing_organism(out_dir: str | Path, *, seed: int = 0, config: OrganismConfig | None = None) -> OrganismResult | None:
    """The organism already built in `out_dir` with this seed and config (both stages finished), or None."""
    out = Path(out_dir)
    record_path = out / "organism.json"
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    cfg = config or OrganismConfig()
    same = record.get("seed") == seed and record.get("config") == json.loads(json.dumps(asdict(cfg), default=str))
    base, ko_ft = out / "base", out / "ko_ft"
    if not (same and (base / "config.json").is_file() and (ko_ft / "config.json").is_file()):
        return None
    manifests = {k: out / v for k, v in record["manifests"].items()}
    return OrganismResult(base, ko_ft, manifests, {k: float(v) for k, v in record["seconds"].items()},
                          record.get("stages", {}))


def _publish(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.move(str(src), str(dst))
    return dst
