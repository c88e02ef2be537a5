"""TrainConfig: the single source of truth for `imprag train` (YAML file, `--dotted.flags`, Python API).

Loss: J = w_lm * J_gen + lambda * J_ret per stage. Stages run in order in one run; the usual recipe is a
retrieval-only warmup (multi-label NCE, lm_weight 0: only the bottom layers run) followed by
self-distillation with the LM loss on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from imprag.config_io import option
from imprag.errors import UserError


@dataclass
class ModelConfig:
    path: str = option("", "backbone: a Hugging Face folder, an ImpRAG checkpoint or a .gguf file")
    b: int | None = option(None, "last bottom layer (default: the checkpoint's imprag.json, else ~N/4)")
    t: int | None = option(None, "last middle layer (default: the checkpoint's, else ~0.7 N)")
    k: int | None = option(None, "passages read per prompt")
    l_max: int | None = option(None, "max tokens per passage")
    state: Literal["pre_rope", "post_rope"] | None = option(None, "retrieval vectors before/after RoPE")
    reader: Literal["concat", "independent"] | None = option(None, "how the passages are read")
    pooling: Literal["content", "mean", "last"] | None = option(
        None,
        "retrieval state averaged over the prompt's content tokens, over all tokens, or the last token's",
    )
    similarity: Literal["cosine", "dot"] | None = option(
        None, "retrieval score: cosine / temperature, or dot"
    )
    temperature: float | None = option(None, "cosine similarity's temperature (default 0.05)")
    calibration: Literal["template", "mean", "none"] | None = option(
        None, "means subtracted from retrieval states: per prompt format, one, or none"
    )
    dtype: Literal["float32", "bfloat16"] = option("float32", "weight dtype (bf16 autocast is `precision`)")


@dataclass
class SourceConfig:
    path: str = option("", "a mined candidates JSONL (retrieval) or a task file (retrieval-free)")
    task: str | None = option(None, "task name (default: each row's `task`, else guessed from the file name)")
    weight: float = option(1.0, "times each example of this file is drawn per epoch of its group")
    limit: int | None = option(None, "use only the first N examples")
    read_provenance: bool = option(
        False,
        "read each row's provenance passages (data.passages ids) through the middle layers for J_gen, filled "
        "up to data.read_passages with other passages; never retrieval targets",
    )
    read_distractors: bool = option(
        True,
        "with read_provenance: fill up to data.read_passages with other passages (false: the provenance "
        "alone, a step's cheapest reading)",
    )


@dataclass
class DataConfig:
    passages: str = option("", "passages JSONL: candidate ids resolve here; also the plain-text LM data")
    retrieval: list[SourceConfig] = option(
        default_factory=list, help="mined candidate files (`imprag mine`): retrieval losses + J_gen"
    )
    retrieval_free: list[SourceConfig] = option(
        default_factory=list, help="task files of tasks that need no retrieval: J_gen only"
    )
    retrieval_ratio: float = option(0.6, "share of each batch drawn from the retrieval tasks")
    retrieval_free_ratio: float = option(0.3, "share drawn from the retrieval-free tasks")
    plain_text_ratio: float = option(0.1, "share of plain passages trained as LM text")
    positives: int = option(5, "top candidates used as NCE positives")
    hard_negatives: int = option(2, "hard negatives per query (fewer than 10), sampled from negative_ranks")
    negative_ranks: list[int] = option(
        default_factory=lambda: [10, 50], help="1-based rank range [lo, hi] of hard negatives"
    )
    read_passages: int | None = option(
        None, "candidates read by the middle layers for J_gen (default: model k)"
    )
    distill_candidates: int = option(10, "top candidates scored by self-distillation")
    max_prompt_tokens: int = option(256, "prompts are cut to their last N tokens")
    max_response_tokens: int = option(64, "responses are cut to their first N tokens")
    max_text_tokens: int = option(256, "plain-text examples are cut to N tokens")
    on_error: Literal["fail", "skip"] = option(
        "fail", "a malformed input line: fail, or skip it with a warning"
    )


@dataclass
class StageConfig:
    name: str = option("warmup", "stage name (shown in the progress bar and metrics)")
    objective: Literal["nce", "distill", "lm"] = option("nce", "retrieval loss: nce, distill, or lm (none)")
    epochs: float | None = option(
        None, "length in passes over the retrieval examples (or all data without any)"
    )
    steps: int | None = option(None, "length in optimizer steps (instead of epochs)")
    lm_weight: float = option(0.0, "weight of J_gen (0: retrieval only, runs just the bottom layers)")
    retrieval_weight: float = option(1.0, "lambda, the weight of the retrieval loss")
    batch_size: int | None = option(None, "examples per optimizer step (default optim.batch_size)")
    grad_accum: int | None = option(None, "micro-batches per optimizer step (default optim.grad_accum)")
    lr_scale: float = option(
        1.0, "this stage's learning rate as a multiple of optim.lr (schedule still applies)"
    )
    freeze_retrieval: bool = option(
        False,
        "leave the retrieval path unchanged (embeddings, layers 0..b-1, layer b's norm and q/k projections): "
        "a reader-only stage, after which an index built before it stays valid",
    )
    retrieval_ratio: float | None = option(None, "this stage's share of retrieval examples (default data's)")
    retrieval_free_ratio: float | None = option(
        None, "this stage's share of retrieval-free examples (default data's)"
    )
    plain_text_ratio: float | None = option(None, "this stage's share of plain passages (default data's)")
    passage_grad: bool = option(
        True,
        "gradient through the read passages' own forward (false: their key/value are computed without "
        "autograd, so J_gen trains the weights through the prompt's side only, at the cost of a forward "
        "over the passages)",
    )


def _default_stages() -> list[StageConfig]:
    return [
        StageConfig(name="warmup", objective="nce", epochs=3.0, lm_weight=0.0, retrieval_weight=1.0),
        StageConfig(name="distill", objective="distill", epochs=7.0, lm_weight=1.0, retrieval_weight=1.0),
    ]


@dataclass
class CachedWarmupConfig:
    steps: int = option(
        0,
        "steps of the cached retrieval warmup run before the stages (0: off): layers 0..b-1 frozen and "
        "cached once, layer b's norm and q/k projections trained with every passage as a negative",
    )
    batch_size: int = option(64, "training prompts per step")
    lr: float = option(1e-3, "AdamW learning rate (constant)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    labels: Literal["mined", "gold"] = option(
        "mined", "positives: the top data.positives mined candidates, or the gold passages"
    )
    title_queries: int = option(
        20000,
        "add up to N label-free pseudo-queries 'Q: <title> A:' made from the passages' titles (positives: "
        "every passage with that title; measured: demo-world dev recall@5 0.945 -> 0.995, real NQ answer "
        "recall@10 0.586 -> 0.758); 0: off",
    )
    title_share: float = option(0.6, "share of the training rows that are title pseudo-queries")
    cache_dir: str | None = option(None, "where the cached layer-b inputs go (default: OUT/cache)")


@dataclass
class LossConfig:
    tau_t: float = option(1.0, "teacher temperature of self-distillation: P_T = softmax(logp / tau_t)")
    tau_r: float = option(1.0, "retriever temperature: P_R = softmax(s / tau_r)")
    nce_tau: float = option(1.0, "NCE temperature (1: the plain dot product)")
    teacher_batch_size: int = option(32, "(passage, prompt) rows per no-grad teacher forward")


@dataclass
class OptimConfig:
    lr: float = option(2e-5, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    betas: list[float] = option(default_factory=lambda: [0.9, 0.999], help="AdamW betas")
    eps: float = option(1e-8, "AdamW epsilon")
    schedule: Literal["linear", "cosine", "constant"] = option("linear", "decay after the warmup")
    warmup_steps: int = option(0, "linear learning-rate warmup steps")
    min_lr_ratio: float = option(0.0, "final learning rate as a fraction of the peak")
    grad_clip: float = option(1.0, "max global gradient norm (0: off)")
    batch_size: int = option(16, "examples per optimizer step over all processes")
    grad_accum: int = option(1, "micro-batches per optimizer step")


@dataclass
class LoRAConfig:
    enabled: bool = option(False, "train LoRA adapters (merged into the weights on save)")
    r: int = option(16, "LoRA rank")
    alpha: float = option(32.0, "LoRA alpha")
    dropout: float = option(0.0, "LoRA dropout")
    target_modules: list[str] = option(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="projection names to adapt",
    )


@dataclass
class DistributedConfig:
    strategy: Literal["ddp", "fsdp"] = option("ddp", "data parallel (ddp) or sharded (fsdp) under torchrun")
    backend: Literal["auto", "gloo", "nccl"] = option("auto", "process-group backend (auto: nccl on GPU)")
    timeout_s: int = option(1800, "collective timeout")


@dataclass
class EvalConfig:
    dev: str | None = option(None, "dev set: mined candidates JSONL, or a task file with gold passage ids")
    task: str | None = option(None, "task of a dev task file (default: guessed from its name)")
    every: int = option(0, "evaluate every N steps (0: only at the end, when `dev` is set)")
    k: list[int] = option(default_factory=lambda: [1, 5, 10], help="recall@k cut-offs")
    max_examples: int = option(200, "dev examples used")
    full_index_max: int = option(20000, "index the whole passages file when it is at most this size")


@dataclass
class TrainConfig:
    out: str = option("runs/train", "output folder: checkpoints/, final/, metrics.jsonl")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cached_warmup: CachedWarmupConfig = field(default_factory=CachedWarmupConfig)
    stages: list[StageConfig] = option(default_factory=_default_stages, help="training stages, run in order")
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = option(0, "seed of the data order, negatives and initialisation")
    device: str = option("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    precision: Literal["auto", "bf16", "fp32"] = option(
        "auto",
        "bf16 autocast: auto = on CUDA only; bf16 = on CUDA or the CPU (about 1.8x faster on CPUs with "
        "AVX512-BF16 / AMX); fp32 = off",
    )
    gradient_checkpointing: bool = option(False, "recompute layer activations in backward")
    save_every: int = option(0, "write a checkpoint every N steps (0: only the final model)")
    keep_checkpoints: int = option(2, "step checkpoints kept (oldest removed)")
    log_every: int = option(1, "append a metrics row every N steps")
    resume: bool = option(False, "continue from the latest checkpoint in `out`")
    overwrite: bool = option(False, "start over even if `out` holds checkpoints of another run")
    progress: bool = option(True, "show a progress bar")
    max_minutes: float | None = option(
        None, "stop after this many minutes of training and save final/ as it stands (a time budget)"
    )

    def validate(self) -> TrainConfig:
        """Semantic checks; each error names the flag and the fix."""
        if not self.model.path:
            raise UserError("--model.path is required: a Hugging Face folder or an ImpRAG checkpoint")
        if not self.out:
            raise UserError("--out is required: the folder for checkpoints and metrics")
        if not self.stages and not self.cached_warmup.steps:
            raise UserError(
                "stages: give at least one stage (e.g. a warmup with objective nce) or --cached_warmup.steps"
            )
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"--max_minutes must be > 0 (got {self.max_minutes})")
        for n, st in enumerate(self.stages):
            if st.lr_scale <= 0:
                raise UserError(f"--stages.{n}.lr_scale must be > 0 (got {st.lr_scale})")
            for name in ("retrieval_ratio", "retrieval_free_ratio", "plain_text_ratio"):
                if (getattr(st, name) or 0) < 0:
                    raise UserError(f"--stages.{n}.{name} must be >= 0 (got {getattr(st, name)})")
        d = self.data
        for name in ("retrieval_ratio", "retrieval_free_ratio", "plain_text_ratio"):
            if getattr(d, name) < 0:
                raise UserError(f"--data.{name} must be >= 0 (got {getattr(d, name)})")
        if d.positives < 1:
            raise UserError(f"--data.positives must be at least 1 (got {d.positives})")
        if not 0 <= d.hard_negatives < 10:
            raise UserError(f"--data.hard_negatives must be from 0 to 9 (got {d.hard_negatives})")
        if len(d.negative_ranks) != 2 or not 1 <= d.negative_ranks[0] <= d.negative_ranks[1]:
            raise UserError(
                f"--data.negative_ranks must be [lo, hi] with 1 <= lo <= hi (got {d.negative_ranks})"
            )
        for name in ("distill_candidates", "max_prompt_tokens", "max_response_tokens", "max_text_tokens"):
            if getattr(d, name) < 1:
                raise UserError(f"--data.{name} must be at least 1 (got {getattr(d, name)})")
        if d.read_passages is not None and d.read_passages < 0:
            raise UserError(f"--data.read_passages must be >= 0 (got {d.read_passages})")
        for group in ("retrieval", "retrieval_free"):
            for i, s in enumerate(getattr(d, group)):
                if not s.path:
                    raise UserError(f"--data.{group}.{i}.path is required")
                if s.weight < 0:
                    raise UserError(f"--data.{group}.{i}.weight must be >= 0 (got {s.weight})")
                if s.read_provenance and group == "retrieval":
                    raise UserError(
                        f"--data.retrieval.{i}.read_provenance: only data.retrieval_free sources read their "
                        "provenance (mined rows read their candidates); remove the flag"
                    )
                if s.read_provenance and not d.passages:
                    raise UserError(
                        f"--data.{group}.{i}.read_provenance needs --data.passages (the provenance ids resolve there)"
                    )
                if s.read_provenance and d.read_passages == 0:
                    raise UserError(
                        f"--data.{group}.{i}.read_provenance reads nothing with --data.read_passages 0; raise it"
                    )
        needs_retrieval_data = any(s.objective in ("nce", "distill") for s in self.stages)
        if needs_retrieval_data and not d.retrieval:
            raise UserError(
                "a stage with objective nce/distill needs retrieval data: list mined candidate files under "
                "data.retrieval (from `imprag mine`)"
            )
        if (d.retrieval or d.plain_text_ratio > 0) and not d.passages:
            raise UserError("--data.passages is required: the passages JSONL the candidates were mined from")
        for i, s in enumerate(self.stages):
            where = f"stages.{i} ({s.name})"
            if (s.epochs is None) == (s.steps is None):
                raise UserError(f"{where}: give exactly one of --stages.{i}.epochs or --stages.{i}.steps")
            if (s.epochs is not None and s.epochs <= 0) or (s.steps is not None and s.steps < 1):
                raise UserError(f"{where}: the stage length must be positive")
            if s.lm_weight < 0 or s.retrieval_weight < 0:
                raise UserError(f"{where}: lm_weight and retrieval_weight must be >= 0")
            if s.objective == "lm" and s.lm_weight == 0:
                raise UserError(
                    f"{where}: objective lm with lm_weight 0 trains nothing; set --stages.{i}.lm_weight"
                )
            if s.freeze_retrieval and s.objective != "lm":
                raise UserError(
                    f"{where}: freeze_retrieval leaves the retrieval loss nothing to train; "
                    f"set --stages.{i}.objective lm (a reader-only stage)"
                )
            if s.objective != "lm" and s.lm_weight == 0 and s.retrieval_weight == 0:
                raise UserError(f"{where}: both loss weights are 0; set --stages.{i}.retrieval_weight")
            for name in ("batch_size", "grad_accum"):
                v = getattr(s, name)
                if v is not None and v < 1:
                    raise UserError(f"--stages.{i}.{name} must be at least 1 (got {v})")
        cw = self.cached_warmup
        if cw.title_queries < 0 or not 0 < cw.title_share < 1:
            raise UserError(
                "--cached_warmup.title_queries must be >= 0 and --cached_warmup.title_share in (0, 1)"
            )
        if cw.steps < 0 or cw.batch_size < 1 or cw.lr <= 0 or cw.weight_decay < 0:
            raise UserError(
                "--cached_warmup.steps must be >= 0, --cached_warmup.batch_size >= 1, --cached_warmup.lr > 0"
            )
        if cw.steps and not d.retrieval:
            raise UserError(
                "--cached_warmup.steps needs retrieval data: list mined files under data.retrieval"
            )
        o = self.optim
        if o.lr <= 0:
            raise UserError(f"--optim.lr must be positive (got {o.lr})")
        if o.batch_size < 1 or o.grad_accum < 1:
            raise UserError("--optim.batch_size and --optim.grad_accum must be at least 1")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise UserError(f"--optim.betas must be two numbers in [0, 1) (got {o.betas})")
        if o.warmup_steps < 0 or o.grad_clip < 0 or not 0 <= o.min_lr_ratio <= 1:
            raise UserError(
                "--optim.warmup_steps and --optim.grad_clip must be >= 0, --optim.min_lr_ratio in [0, 1]"
            )
        lo = self.loss
        if lo.tau_t <= 0 or lo.tau_r <= 0 or lo.nce_tau <= 0:
            raise UserError("--loss.tau_t, --loss.tau_r and --loss.nce_tau must be positive")
        if lo.teacher_batch_size < 1:
            raise UserError("--loss.teacher_batch_size must be at least 1")
        if self.save_every < 0 or self.log_every < 1 or self.keep_checkpoints < 1:
            raise UserError("--save_every must be >= 0, --log_every and --keep_checkpoints at least 1")
        if self.eval.every < 0 or self.eval.max_examples < 1 or not self.eval.k or min(self.eval.k) < 1:
            raise UserError("--eval.every must be >= 0, --eval.max_examples >= 1, --eval.k positive integers")
        if self.lora.enabled and self.distributed.strategy == "fsdp":
            raise UserError(
                "LoRA with --distributed.strategy fsdp is not supported; use ddp (adapters are small)"
            )
        if self.lora.enabled and (self.lora.r < 1 or not self.lora.target_modules):
            raise UserError("--lora.r must be at least 1 and --lora.target_modules non-empty")
        return self
