"""The model organism: a tiny LLaVA that learns to use the image, then a Korean fine-tune that may make it blind."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from probe.data.example import Example
from probe.data.manifest import read_manifest
from probe.data.synth import SynthConfig, generate
from train.sft.config import SFTConfig
from train.sft.loop import sft

QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position", "text")
N_BASE_TOKENS = 260  # tiny_llava's byte tokenizer: 256 bytes, <s>, </s>, <pad>, <image>


@dataclass(frozen=True)
class OrganismConfig:
    """Recipe of the organism: data sizes, question types, and the two SFT stages."""

    # Colour only: in trials, mixing shape/position/count/text questions left the model ignoring the
    # image after 600 steps (answer priors first), while colour alone is learned within ~200 steps.
    question_types: tuple[str, ...] = ("colour",)
    stage1_steps: int = 300
    stage1_lr: float = 1e-3
    stage2_steps: int = 150
    stage2_lr: float = 3e-4
    batch_size: int = 32
    threads: int = 2
    # Subword vocabulary trained on the organism's corpus (0 = the byte-level tokenizer of probe.models.tiny):
    # with bytes only, every Hangul word is a mean of shared UTF-8 byte embeddings (issue 12).
    vocab_size: int = 1024
    synth: SynthConfig = field(default_factory=SynthConfig)

    def __post_init__(self) -> None:
        bad = [q for q in self.question_types if q not in QUESTION_TYPES]
        if bad or not self.question_types:
            raise ValueError(f"OrganismConfig.question_types: unknown {bad} (choose from {QUESTION_TYPES})")
        if self.stage1_steps < 1 or self.stage2_steps < 1 or self.batch_size < 1 or self.threads < 1:
            raise ValueError("OrganismConfig: steps, batch_size and threads must be >= 1")
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


def build_organism(
    out_dir: str | Path, *, seed: int = 0, config: OrganismConfig | None = None, progress: bool = True
) -> OrganismResult:
    """Generate the synthetic data, train stage 1 -> out_dir/base and stage 2 -> out_dir/ko_ft."""
    from probe.models.registry import adapter_for
    from probe.models.tiny import tiny_llava

    cfg = config or OrganismConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "organism.json").unlink(missing_ok=True)  # written last: its presence marks a finished organism
    torch.set_num_threads(cfg.threads)
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    manifests = generate(out / "data", seed=seed, config=cfg.synth)
    seconds["data"] = time.perf_counter() - t
    model, processor = tiny_llava(seed)
    keep = set(cfg.question_types)
    stage1 = [e for e in read_manifest(manifests["stage1_train"]) if e.question_type in keep]
    stage2 = [e for e in read_manifest(manifests["stage2_train"]) if e.question_type in keep]
    if cfg.vocab_size:
        processor.tokenizer = subword_tokenizer(corpus(stage1 + stage2), processor.tokenizer, cfg.vocab_size)
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(processor.tokenizer), mean_resizing=False)
    adapter = adapter_for(model, processor)
    common = dict(batch_size=cfg.batch_size, threads=cfg.threads, seed=seed, device="cpu",
                  checkpoint_every=10**9, log_every=10)
    runs = out / "runs"
    t = time.perf_counter()
    sft(adapter, stage1, SFTConfig(lr=cfg.stage1_lr, max_steps=cfg.stage1_steps, **common), runs / "stage1",
        resume=False, progress=progress)
    seconds["stage1"] = time.perf_counter() - t
    base = _publish(runs / "stage1" / "final", out / "base")
    t = time.perf_counter()
    sft(adapter, stage2, SFTConfig(lr=cfg.stage2_lr, max_steps=cfg.stage2_steps, **common), runs / "stage2",
        resume=False, progress=progress)
    seconds["stage2"] = time.perf_counter() - t
    ko_ft = _publish(runs / "stage2" / "final", out / "ko_ft")
    record = {"seed": seed, "seconds": seconds, "config": asdict(cfg),
              "manifests": {k: str(v.relative_to(out)) for k, v in manifests.items()}}
    (out / "organism.json").write_text(json.dumps(record, indent=1, default=str))
    return OrganismResult(base, ko_ft, manifests, seconds)


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
        raise ValueError(f"subword_tokenizer: expected the {N_BASE_TOKENS}-token byte tokenizer of probe.models.tiny")
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
    return OrganismResult(base, ko_ft, manifests, {k: float(v) for k, v in record["seconds"].items()})


def _publish(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    shutil.move(str(src), str(dst))
    return dst
