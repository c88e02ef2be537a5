"""`imprag demo`: the paper's experiment in miniature, from nothing but pip.

Steps (each writes its result atomically and is skipped when its result exists, so a re-run resumes):
  world     a synthetic knowledge world (passages + KILT task files) for the experiment, and a sibling
            world with other entities that the tiny backbone is pretrained on (so closed-book stays
            near zero by construction: the test facts were never seen). With --world DIR, that folder
            (the world layout, imprag.demo.layout) is checked and used as it is instead, never written
  free      --world only: the retrieval-free training tasks the folder lacks, built from its passages
  backbone  tiny: a small Llama pretrained on the sibling world's passages and reading-comprehension
            examples; smollm2: the real SmolLM2-135M-Instruct
  mine      BM25 pseudo labels (whole prompt as the query) for the seen QA formats
  train     retrieval warmup (NCE, bottom layers only), the size's joint / reader stages, then
            self-distillation + LM loss
  index     the world's passages embedded by the trained bottom layers
  eval      imprag, rag-bm25, closed-book and oracle on every format's test split (a --world folder's
            missing test splits are skipped, and named in the log, the report and demo.json)
  report    Table-2-shaped markdown + bar chart, and three answered questions
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from imprag.data.retrieval_free import EVIDENCE_TASKS
from imprag.errors import UserError
from imprag.model.config import PAPER_RETRIEVAL

if TYPE_CHECKING:
    from imprag.demo.layout import WorldPlan
    from imprag.train.config import TrainConfig

log = logging.getLogger(__name__)

FREE_LIMIT = 2000  # examples per retrieval-free task built from a --world folder's passages


@dataclass
class DemoSize:
    entities: int
    pretrain_steps: int  # tiny backbone LM pretraining on a sibling world (0: start from random weights)
    warmup_steps: int  # retrieval-only NCE
    distill_steps: int  # self-distillation + J_gen
    warmup_batch: int
    distill_batch: int
    eval_limit: int  # test examples per task
    eval_limits: dict[str, int] = field(default_factory=dict)  # per task where it differs from eval_limit
    joint_steps: int = 0  # between warmup and distill: NCE + J_gen (the paper's warmup), batch distill_batch
    # then J_gen alone with the retrieval path frozen (a reader-only stage), batch distill_batch
    read_steps: int = 0
    read_lr_scale: float = 0.3
    layers: int = 6
    hidden: int = 192
    heads: int = 4
    kv_heads: int = 2
    vocab: int = 2048
    b: int = 2
    t: int = 5  # t = N-1: every layer from b reads (the tiny model needs all the depth it has)
    k: int = 5
    l_max: int = 96
    positives: int = 1  # BM25's top-1 is the gold passage ~97% of the time on this world (paper: top-5)
    hard_negatives: int = 2
    lr_pretrain: float = 2e-3
    lr_warmup: float = 2e-3
    nce_tau: float = 1.0  # NCE / retriever temperature
    # the learning rate over all stages (times each stage's lr_scale)
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    # the cached warmup (imprag.train.retrieval_cache) before the stages: layer b's norm and q/k projections
    # on cached layer-b inputs, every passage a negative (0: off)
    cached_warmup_steps: int = 0
    # the paper's retrieval state (last token, dot product, no calibration). The tiny backbone trains every
    # layer from scratch with uncached NCE, where it learns (dev recall@5 0.68 at step 65) and the default
    # content/cosine/template state, whose means go stale as the bottom layers change, did not (0.02)
    paper_state: bool = True
    # the later stages' gradient through the read passages' own forward (False: a reader stage costs about a
    # forward over its passages)
    passage_grad: bool = True
    # the retrieval-free training tasks and their share of each batch
    free_tasks: tuple[str, ...] = ("rc", "denoise", "nextsent", *EVIDENCE_TASKS)
    free_ratio: float = 0.3
    evidence_distractors: bool = True  # true/false statements read other passages beside their source
    train_limit: int | None = None  # training questions used per seen task (None: all)


SIZES = {
    "tiny": DemoSize(  # the CI smoke test: every step, minutes-scale numbers shrunk to seconds
        entities=300,
        pretrain_steps=0,
        warmup_steps=60,
        distill_steps=3,
        warmup_batch=32,
        distill_batch=4,
        joint_steps=2,
        read_steps=2,
        eval_limit=6,
        layers=4,
        hidden=96,
        vocab=768,
        b=1,
        t=3,
    ),
    "small": DemoSize(
        entities=1500,
        pretrain_steps=0,
        warmup_steps=260,
        distill_steps=40,
        warmup_batch=64,
        distill_batch=8,
        eval_limit=100,
    ),
    "full": DemoSize(  # sized for 60 minutes on 2 CPU cores
        entities=3000,
        pretrain_steps=0,
        warmup_steps=400,
        distill_steps=40,
        warmup_batch=64,
        distill_batch=16,
        joint_steps=80,
        eval_limit=200,
        layers=8,
        hidden=256,
        heads=8,
        kv_heads=4,
        vocab=4096,
        b=2,
        t=7,
    ),
}


# the small size's test questions where they differ from 8: 32 for the QA formats whose EM the methods are
# compared on (a 16-question cell has a standard error of ~12 EM points, 32 ~9); 16 for the formats whose
# answer recall (T-REx, zsRE) or accuracy (FEVER) the demo states a floor for. 2Wiki and AIDA, with no
# claim on them, get 8, which pays for most of the rest
SMALL_EVAL_LIMITS = {"nq": 32, "hotpotqa": 32, "simpleqa": 32, "trex": 16, "zsre": 16, "fever": 16}
# per size for SmolLM2: (cached warmup steps, reader steps, test questions per task, where they differ)
SMOLLM2_STEPS = {
    "tiny": (30, 2, 3, {}),
    "small": (1000, 40, 8, SMALL_EVAL_LIMITS),
    "full": (2000, 120, 100, {}),
}


def smollm2_size(size_name: str) -> DemoSize:
    """The same world for the real 135M backbone (30 layers), with what a pretrained model needs.

    - Retrieval: the cached warmup (1,000 steps on cached layer-7 inputs, every passage a negative, title
      pseudo-queries) with content-pooled, calibrated cosine states (the defaults). The paper's last-token
      dot product reached 0.70 dev recall@5 after 260 full NCE steps on an H100; this, 0.995 in about 2.5
      CPU minutes. 1,000 steps instead of 300 (+13 s) take test recall@1 from 0.83 to 0.93 on SimpleQA-style
      questions (T-REx 0.81 -> 0.93, zsRE 0.70 -> 0.85): with a wrong passage first the reader answers from
      it. 2,000 steps gain 0.01-0.04 more for 18 s, which a world with longer passages cannot spare
      (the full size, with no time floor, runs them). Its passage vectors become the index.
    - b=7 as `imprag pull` sets it, but t=29: every layer from b reads. Untrained, the gold passage through
      layers 7..21 lowers the answer's NLL/token from 9.84 to 6.22 on NQ-style questions, through 7..29
      to 4.14 (in the context: 3.78); trained, gold-passage EM 95% at t=29 against 76% at t=21.
    - A reader stage: J_gen at lr 1e-4 (at 1.25e-5 it did not learn to read), the retrieval path frozen
      (so the warmup's retrieval and its index vectors stay exactly), 6 of 8 examples per step a training
      question reading its 5 BM25 candidates (train on as many passages as it will read), with no gradient
      through the passages' own forward (the CPU cost of a step is then about a forward over its passages).
      The other 2: true/false statements built from the passages, each read with its source passage alone
      (FEVER's answer format, taught without FEVER data). A stage of them alone before it taught the format
      but no judgement (its label loss stayed at chance, also at 4x the learning rate) and cost 78 s, so
      there is none; evaluation judges FEVER claims by their likelihood given the passages
      (`imprag.eval.verify`). 40 steps (240 questions) rather than 28 (+25-35 s): gold-passage NQ-style EM on
      the first 32 test questions 65.6 -> 75.0 (seed 0's world), 53.1 -> 84.4 (seed 1's), mostly on
      birthplaces, whose passages name a country or city before the birthplace.
    - 600 training questions per seen task: the warmup's prompt cache costs seconds, not a minute.
    - No self-distillation: on the GPU runs it took dev recall@5 from 0.70-0.77 to 0.53-0.57.
    - Decoding and the reader stage in bf16 autocast where the CPU (AVX512-BF16 / AMX) or GPU has it.
    Numbers and commands: docs/benchmarks.md."""
    cached, read, limit, limits = SMOLLM2_STEPS[size_name]
    return replace(
        SIZES[size_name],
        b=7,
        t=29,
        lr_warmup=1e-4,
        schedule="constant",
        nce_tau=1.0,
        cached_warmup_steps=cached,
        paper_state=False,
        passage_grad=False,
        free_tasks=EVIDENCE_TASKS,  # a pretrained reader needs the answer format, not LM upkeep
        free_ratio=0.25,
        evidence_distractors=False,
        train_limit=600,
        warmup_steps=0,
        joint_steps=0,
        read_steps=read,
        read_lr_scale=1.0,
        distill_steps=0,
        distill_batch=8,
        eval_limit=limit,
        eval_limits=dict(limits),
    )


@dataclass
class DemoConfig:
    out: Path = Path("runs/demo")
    size: str = "small"
    backbone: str = (
        "smollm2"  # smollm2 (real weights) | tiny (a random Llama trained here: the CI smoke size)
    )
    seed: int = 0
    train_minutes: float | None = None  # a time budget for training (None: the size's step counts)
    methods: list[str] = field(
        default_factory=lambda: ["imprag", "rag-bm25", "rag-dense", "closed-book", "oracle"]
    )
    # a folder in the world layout (imprag.demo.layout) used in place of the generated world (None: generate)
    world: Path | None = None
    # test questions for every format (None: the size's; a 16-question cell's standard error is ~12 EM points)
    eval_questions: int | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.world is not None:
            self.world = Path(self.world)
            out, world = self.out.resolve(), self.world.resolve()
            if out == world or world in out.parents:
                raise UserError(
                    f"--out {self.out} is inside --world {self.world}: the world folder is only read; "
                    "pass an --out outside it"
                )
        if self.size not in SIZES:
            raise UserError(f"--size must be one of {', '.join(SIZES)} (got {self.size!r})")
        if self.backbone not in ("tiny", "smollm2"):
            raise UserError(f"--backbone must be tiny or smollm2 (got {self.backbone!r})")
        if self.eval_questions is not None and self.eval_questions < 1:
            raise UserError(f"--eval-questions must be >= 1 (got {self.eval_questions})")


class Demo:
    def __init__(self, cfg: DemoConfig):
        self.cfg = cfg
        size = SIZES[cfg.size] if cfg.backbone == "tiny" else smollm2_size(cfg.size)
        if cfg.eval_questions is not None:  # N for every format
            size = replace(size, eval_limit=cfg.eval_questions, eval_limits={})
        self.size = size
        self.device = "cuda" if _cuda() else "cpu"
        # bf16 autocast for the real backbone where the hardware has it (the tiny one stays fp32)
        self.precision = "bf16" if cfg.backbone == "smollm2" and _bf16_fast(self.device) else "fp32"
        self.out = cfg.out
        self.timings: dict[str, float] = {}

    # ---------------------------------------------------------------- helpers
    def _step(self, name: str, done: Path, fn) -> Any:
        if done.exists():
            log.info("[%s] done already (%s)", name, done)
            return None
        log.info("[%s] ...", name)
        start = time.perf_counter()
        result = fn()
        self.timings[name] = time.perf_counter() - start
        log.info("[%s] finished in %.1f s", name, self.timings[name])
        return result

    def eval_limit(self, task: str) -> int:
        """Test questions evaluated for `task`."""
        return self.size.eval_limits.get(task, self.size.eval_limit)

    def results_dir(self, name: str) -> Path:
        """`eval` or `report` under --out; with --eval-questions N, `eval-N` / `report-N`, so that a rerun with
        another N never reuses the cells or the report of the first."""
        n = self.cfg.eval_questions
        return self.out / (name if n is None else f"{name}-{n}")

    @property
    def world(self) -> Path:
        return self.cfg.world if self.cfg.world is not None else self.out / "world"

    @cached_property
    def plan(self) -> WorldPlan:
        """What the demo trains and evaluates on; a --world folder is checked here (UserError when unfit)."""
        from imprag.demo.layout import WorldPlan, inspect_world

        return inspect_world(self.world) if self.cfg.world is not None else WorldPlan.generated(self.world)

    @property
    def passages(self) -> Path:
        return self.world / "passages.jsonl"

    def task_file(self, task: str, split: str, world: Path | None = None) -> Path:
        return (world or self.world) / "tasks" / task / f"{split}.jsonl"

    @property
    def built_free(self) -> list[str]:
        """Retrieval-free tasks built from the passages under --out: what a --world folder lacks, and the
        true/false statements that teach FEVER's answer format (never taken from a world's FEVER files)."""
        return [t for t in (*self.plan.build_free, *EVIDENCE_TASKS) if t in self.size.free_tasks]

    def free_task_file(self, task: str) -> Path:
        """A retrieval-free task's training file: the world's own, or the one built under --out."""
        if task in self.built_free:
            return self.out / "free" / task / "train.jsonl"
        return self.task_file(task, "train")

    # ---------------------------------------------------------------- steps
    def make_worlds(self) -> None:
        from imprag.demo.world import generate_world

        if self.cfg.world is not None:
            log.info("[world] %s as given (not generated, not written)", self.world)
            return
        self._step(
            "world",
            self.world / "world.json",
            lambda: generate_world(self.world, self.cfg.seed, self.size.entities),
        )
        if self.cfg.backbone == "tiny" and self.size.pretrain_steps > 0:
            sib = self.out / "pretrain-world"
            self._step(
                "pretrain-world",
                sib / "world.json",
                lambda: generate_world(sib, self.cfg.seed + 1000, self.size.entities),
            )

    def make_backbone(self) -> Path:
        if self.cfg.backbone == "smollm2":  # converted once per machine, shared by every run
            from imprag.model.pull import pull
            from imprag.retrievers.base import default_cache_dir

            path = default_cache_dir() / "models" / "smollm2"
            self._step("backbone", path / "imprag.json", lambda: pull("smollm2", path))
            return path
        init = self.out / "backbone" / "init"
        self._step("backbone", init / "imprag.json", self._tiny_init)
        if self.size.pretrain_steps == 0 or self.cfg.world is not None:  # a given world has no sibling
            return init
        final = self.out / "backbone" / "final"
        self._step("pretrain", final / "imprag.json", self._pretrain_tiny)
        return final

    def _tiny_init(self) -> None:
        """A random Llama with a BPE tokenizer trained on the world's text (names become few tokens)."""
        import torch
        from transformers import AutoModelForCausalLM

        from imprag.model.config import ImpRAGConfig
        from imprag.model.tiny import build_tokenizer, tiny_config
        from imprag.passage import read_passages

        s = self.size
        init = self.out / "backbone" / "init"
        sib = self.out / "pretrain-world" / "passages.jsonl"
        texts = read_passages(self.passages)[1] + (read_passages(sib)[1] if sib.exists() else [])
        tok = build_tokenizer(texts, vocab_size=s.vocab)
        cfg = tiny_config(
            "llama",
            vocab_size=len(tok),
            layers=s.layers,
            hidden=s.hidden,
            heads=s.heads,
            kv_heads=s.kv_heads,
            intermediate=s.hidden * 3,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(self.cfg.seed)
        lm = AutoModelForCausalLM.from_config(cfg)
        lm.save_pretrained(init)
        tok.save_pretrained(init)
        ImpRAGConfig(b=s.b, t=s.t, k=s.k, l_max=s.l_max).save(init)

    def _pretrain_tiny(self) -> None:
        """LM pretraining on a sibling world's passages and reading-comprehension examples.

        Measured on the small world: after 200 such steps the retrieval warmup stayed at chance (dev
        recall@5 0.005 at step 100: every query found the same few "hub" passages), while the same warmup
        from random weights reached 0.69 at step 50. So the default sizes skip it (pretrain_steps=0)."""
        from imprag.train.config import (
            DataConfig,
            ModelConfig,
            OptimConfig,
            SourceConfig,
            StageConfig,
            TrainConfig,
        )
        from imprag.train.loop import train

        s = self.size
        init = self.out / "backbone" / "init"
        sib = self.out / "pretrain-world"
        free = [SourceConfig(path=str(self.task_file(t, "train", sib)), task=t) for t in ("rc", "nextsent")]
        train(
            TrainConfig(
                out=str(self.out / "backbone"),
                model=ModelConfig(path=str(init)),
                data=DataConfig(
                    passages=str(sib / "passages.jsonl"),
                    retrieval=[],
                    retrieval_free=free,
                    retrieval_ratio=0.0,
                    retrieval_free_ratio=0.5,
                    plain_text_ratio=0.5,
                    max_prompt_tokens=192,
                    max_text_tokens=128,
                ),
                stages=[
                    StageConfig(
                        name="pretrain", objective="lm", steps=s.pretrain_steps, lm_weight=1.0, batch_size=32
                    )
                ],
                optim=OptimConfig(lr=s.lr_pretrain, schedule="cosine", warmup_steps=20, weight_decay=0.01),
                seed=self.cfg.seed,
                overwrite=True,
            )
        )

    def make_free_tasks(self) -> None:
        """Build the retrieval-free training tasks a --world folder lacks (imprag.data.retrieval_free)."""
        for task in self.built_free:
            self._step(f"free {task}", self.free_task_file(task), lambda task=task: self._build_free(task))

    def _build_free(self, task: str) -> None:
        import random

        from imprag.data import retrieval_free as rf
        from imprag.data.kilt import load_examples
        from imprag.io import atomic_write_jsonl
        from imprag.passage import read_passage_lines

        passages = [p.record for p in read_passage_lines(self.passages)]
        seed = self.cfg.seed
        if task == "rc":
            by_id = {str(p["id"]): p for p in passages}
            rows = rf.rc_rows(load_examples(self.task_file("nq", "train"), "nq"), by_id, seed, FREE_LIMIT)
        else:
            random.Random(f"demo-free:{task}:{seed}").shuffle(passages)  # a sample of a big corpus
            build = {"denoise": rf.denoise_rows, "nextsent": rf.nextsent_rows, "verify": rf.verify_rows}[task]
            rows = build(passages, seed, FREE_LIMIT)
        if not rows:
            log.warning("[free %s] no passage gave an example: %s is left out of training", task, task)
        atomic_write_jsonl(self.free_task_file(task), rows)

    def mine(self) -> list[Path]:
        from imprag.data.kilt import load_examples
        from imprag.data.mining import mine
        from imprag.io import atomic_write_jsonl

        paths = []
        for task, split in self.plan.mine:
            out = self.out / "mined" / f"{task}-{split}.jsonl"
            paths.append(out)

            def run(task=task, split=split, out=out):
                examples = load_examples(self.task_file(task, split), task)
                atomic_write_jsonl(
                    out, mine(examples, self.passages, "bm25", top_k=50, cache_dir=self.out / "cache")
                )

            self._step(f"mine {task}/{split}", out, run)
        return paths

    def train_config(self, backbone: Path) -> TrainConfig:
        """The TrainConfig of the demo's training: warmup, then the size's joint / read / distill stages."""
        from imprag.train.config import (
            CachedWarmupConfig,
            DataConfig,
            EvalConfig,
            LossConfig,
            ModelConfig,
            OptimConfig,
            SourceConfig,
            StageConfig,
            TrainConfig,
        )

        s = self.size
        out = self.out / "train"
        mined = self.out / "mined"
        # a task built from a --world folder's passages that gave no example is left out; the true/false
        # statements read their source passage through the middle layers
        free = [
            SourceConfig(
                path=str(path),
                task=t,
                read_provenance=t in EVIDENCE_TASKS,
                read_distractors=s.evidence_distractors,
            )
            for t in s.free_tasks
            if not _empty_file(path := self.free_task_file(t))
        ]
        warmup = StageConfig(
            name="warmup", objective="nce", steps=s.warmup_steps, lm_weight=0.0, batch_size=s.warmup_batch
        )

        def later(**stage: Any) -> StageConfig:
            """A stage after the warmup: J_gen on, batch distill_batch."""
            return StageConfig(
                lm_weight=1.0, batch_size=s.distill_batch, passage_grad=s.passage_grad, **stage
            )

        # the reader learns while NCE keeps retrieval supervised (the paper's warmup). Measured on the
        # full size: 120 distillation steps straight after the retrieval-only warmup took dev recall@5
        # from 0.51 to 0.055 (its teacher, the reader, cannot read yet)
        joint = later(name="joint", objective="nce", steps=s.joint_steps, lr_scale=0.1)
        # J_gen alone, retrieval frozen: the reader learns from the pseudo labels' top-k (as RA-IT does)
        # while the retrieval vectors stay exactly as the warmup left them
        read = later(
            name="read", objective="lm", steps=s.read_steps, lr_scale=s.read_lr_scale, freeze_retrieval=True
        )
        # a gentler stage: the reader's likelihoods are a young teacher, and at the warmup's learning
        # rate the LM loss and a noisy teacher undo what the warmup learned
        distill = later(name="distill", objective="distill", steps=s.distill_steps, lr_scale=0.1)
        return TrainConfig(
            out=str(out),
            model=ModelConfig(path=str(backbone), b=s.b, t=s.t, **(PAPER_RETRIEVAL if s.paper_state else {})),
            data=DataConfig(
                passages=str(self.passages),
                retrieval=[
                    SourceConfig(path=str(mined / f"{t}-train.jsonl"), limit=s.train_limit)
                    for t in self.plan.train
                ],
                retrieval_free=free,
                retrieval_ratio=1.0 - s.free_ratio,
                retrieval_free_ratio=s.free_ratio,
                plain_text_ratio=0.0,
                positives=s.positives,
                hard_negatives=s.hard_negatives,
                read_passages=s.k,
                distill_candidates=s.k,
            ),
            cached_warmup=CachedWarmupConfig(steps=s.cached_warmup_steps, batch_size=s.warmup_batch),
            stages=[st for st in (warmup, joint, read, distill) if st.steps],
            loss=LossConfig(tau_t=1.0, tau_r=s.nce_tau, nce_tau=s.nce_tau),
            optim=OptimConfig(lr=s.lr_warmup, schedule=s.schedule, warmup_steps=10, min_lr_ratio=0.1),
            eval=EvalConfig(
                dev=str(mined / "nq-dev.jsonl"),
                every=max(25, s.warmup_steps // 4),
                k=[1, 5, 10],
                max_examples=200,
            ),
            seed=self.cfg.seed,
            precision=self.precision,  # type: ignore[arg-type]
            max_minutes=self.cfg.train_minutes,
            save_every=max(50, s.warmup_steps // 2),
            resume=(out / "checkpoints").exists(),
            overwrite=not (out / "checkpoints").exists(),
        )

    def train(self, backbone: Path) -> Path:
        from imprag.train.loop import train

        final = self.out / "train" / "final"
        self._step("train", final / "imprag.json", lambda: train(self.train_config(backbone)))
        return final

    def index(self, model_dir: Path) -> Path:
        from imprag.index.build import IndexBuildConfig, build_index
        from imprag.index.encoder import model_encoder
        from imprag.model.imprag import ImpRAG

        out = self.out / "index"

        def run():
            model = ImpRAG.from_pretrained(model_dir, device=self.device)
            build_index(  # the training's stored passage vectors when still valid (no second pass)
                IndexBuildConfig(out=out, passages=self.passages, dtype="float32"),
                model_encoder(model, source=model_dir),
            )

        self._step("index", out / "metadata.json", run)
        return out

    def evaluate(self, model_dir: Path, index: Path) -> list[Path]:
        from imprag.eval.runner import EvalConfig, run_eval
        from imprag.model.imprag import ImpRAG

        for task, why in self.plan.skipped.items():
            log.info("[eval] %s skipped: %s", task, why)
        model = ImpRAG.from_pretrained(model_dir, device=self.device)  # run_eval sets its decode precision
        runs = []
        for method in self.cfg.methods:
            for task in self.plan.evaluate:
                out = self.results_dir("eval") / f"{method}-{task}"
                runs.append(out)
                cfg = EvalConfig(
                    model=model_dir,
                    data=[self.task_file(task, "test")],
                    tasks=[task],
                    method=method,
                    out=out,
                    index=index if method == "imprag" else None,
                    passages=self.passages,
                    k=self.size.k,
                    limit=(limit := self.eval_limit(task)),
                    batch_size=min(limit, 16),  # in batches of 32 the 32-question cells took 1.3x as long
                    max_new_tokens=16,
                    cache_dir=self.out / "cache",
                    precision=self.precision,
                    show_progress=False,
                )
                done = out / "metrics.json"
                if done.exists() and json.loads(done.read_text()).get("limit") != limit:
                    log.info(
                        "[eval %s/%s] %d test questions now: evaluating the cell again", method, task, limit
                    )
                    done.unlink()  # run_eval reuses the finished batches that still apply
                self._step(f"eval {method}/{task}", done, lambda cfg=cfg: run_eval(cfg, model=model))
        return runs

    def report(self, runs: list[Path]) -> Path:
        from imprag.eval.report import build_report

        out = self.results_dir("report")
        if any(name.startswith("eval ") for name in self.timings):  # a cell changed: the report is stale
            (out / "table.md").unlink(missing_ok=True)
        self._step(
            "report",
            out / "table.md",
            lambda: build_report(
                list[str | Path](runs), out, title=f"imprag demo ({self.cfg.size})", skipped=self.plan.skipped
            ),
        )
        return out

    def showcase(self, model_dir: Path, index: Path, n: int = 3) -> list[dict[str, Any]]:
        """Answer n test questions, keeping the passages the model chose."""
        from imprag.data.kilt import load_examples
        from imprag.index.faiss_index import Index
        from imprag.model.imprag import ImpRAG
        from imprag.rag import answer

        model = ImpRAG.from_pretrained(model_dir, device=self.device)
        model.decode_precision = self.precision
        idx = Index.load(index, model=model)
        task = "nq" if "nq" in self.plan.evaluate else self.plan.evaluate[0]
        examples = load_examples(self.task_file(task, "test"), task, limit=n)
        answers = answer(
            model, idx, [e.prompt for e in examples], k=self.size.k, max_new_tokens=16, stop=["\n"]
        )
        shown = []
        for e, a in zip(examples, answers):
            shown.append(
                {
                    "prompt": e.prompt,
                    "gold": e.answers,
                    "answer": a.text,
                    "gold_passages": [p.passage_id for p in e.provenance],
                    "passages": [
                        {"id": p["id"], "title": p.get("title"), "score": round(p["score"], 2)}
                        for p in a.passages
                    ],
                }
            )
        return shown

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        if self.cfg.world is not None:  # the folder is checked (self.plan) before any work
            log.info("[world] %s: evaluating %s", self.world, ", ".join(self.plan.evaluate))
        self.out.mkdir(parents=True, exist_ok=True)
        self.make_worlds()
        self.make_free_tasks()
        backbone = self.make_backbone()
        self.mine()
        model_dir = self.train(backbone)
        index = self.index(model_dir)
        runs = self.evaluate(model_dir, index)
        report = self.report(runs)
        shown = self.showcase(model_dir, index)
        summary = {
            "size": self.cfg.size,
            "backbone": self.cfg.backbone,
            "device": _device_name(self.device),
            "world": str(self.world),
            "skipped": self.plan.skipped,
            "seconds": round(time.perf_counter() - start, 1),
            "step_seconds": {k: round(v, 1) for k, v in self.timings.items()},
            "report": str(report / "table.md"),
            "chart": str(report / "chart.png"),
            "examples": shown,
        }
        from imprag.io import atomic_write_json

        atomic_write_json(self.out / "demo.json", summary)
        return summary


def _empty_file(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == 0


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bf16_fast(device: str) -> bool:
    """bf16 matrix units: a GPU that supports bf16, or a CPU with AVX512-BF16 / AMX (oneDNN)."""
    import torch

    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _device_name(device: str) -> str:
    import os

    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
