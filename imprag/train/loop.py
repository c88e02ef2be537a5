"""`train(config) -> Path`: every stage in one run, single process or under torchrun (DDP / FSDP).

Per optimizer step: the step's global batch (data.Mixture, a pure function of seed and step) is split into
micro-batches and per-process slices; each micro-batch's loss (objective.TrainObjective) is backpropagated,
gradients are clipped, AdamW steps, the schedule advances. Only rank 0 writes (metrics, checkpoints, final).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imprag.config_io import to_dict
from imprag.errors import UserError
from imprag.io import atomic_write_json, atomic_write_jsonl
from imprag.model.imprag import ImpRAG
from imprag.train import checkpoint as ck
from imprag.train.collate import Collator
from imprag.train.config import TrainConfig
from imprag.train.data import Mixture, StagePlan, load_passages, micro_batches
from imprag.train.distributed import DistEnv, init_distributed
from imprag.train.objective import TrainObjective, autocast_context

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
PARTS = ("lm", "nce", "distill")


def train(config: TrainConfig) -> Path:
    """Train as configured; returns the final ImpRAG folder (out/final)."""
    cfg = config.validate()
    # Saturated softmaxes (large retrieval scores) fill the backward pass with denormal floats, which
    # made CPU steps ~9x slower (measured 36 s vs 4 s); flushing them to zero changes nothing visible.
    torch.set_flush_denormal(True)
    env = init_distributed(cfg.device, cfg.distributed.backend, cfg.distributed.timeout_s)
    try:
        return _Trainer(cfg, env).run()
    finally:
        env.close()


def lr_lambda(total: int, warmup: int, schedule: str, min_ratio: float, stage_scales=()):
    """Multiplier of the peak learning rate at step s: linear warmup, then linear/cosine decay to min_ratio,
    times the scale of the stage that step belongs to (`stage_scales`: (first step, scale) pairs)."""

    def base(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return min_ratio + (1 - min_ratio) * (1 - progress)

    def f(s: int) -> float:
        scale = 1.0
        for start, stage_scale in stage_scales:
            if s >= start:
                scale = stage_scale
        return base(s) * scale

    return f


@torch.no_grad()
def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create AdamW's state for every parameter now (zero moments, step 0) instead of at its first gradient.

    The numbers are the same as lazy creation (a parameter's first real step still counts as step 1), but
    every checkpoint then holds state for every parameter: during a retrieval-only warmup the layers above
    b have none yet, and loading such a partial state into a sharded optimizer would create it with a
    fake step and shift the bias correction of the resumed run."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    lrs = [g["lr"] for g in optimizer.param_groups]
    for g in optimizer.param_groups:
        g["lr"] = 0.0  # AdamW's decoupled decay is p *= 1 - lr * wd: no change at lr 0
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for p in params:
        p.grad = None
    for g, lr in zip(optimizer.param_groups, lrs):
        g["lr"] = lr
    for st in optimizer.state.values():
        if "step" in st:
            st["step"] = st["step"].zero_() if torch.is_tensor(st["step"]) else 0


@dataclass
class _Run:
    """What one training run works with, built by _Trainer._setup (restored when resuming)."""

    passages: dict[str, str]
    mixture: Mixture
    plans: list[StagePlan]
    total_steps: int
    model: ImpRAG
    wrapped: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dev: Any
    start: int = 0  # the first step to run
    tokens_done: int = 0
    elapsed_before: float = 0.0  # training seconds before this process started (resumed runs)


class _Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv):
        self.cfg, self.env = cfg, env
        self.out = Path(cfg.out)
        # {passage id: search vector} from the cached warmup, valid until a stage moves the retrieval path
        self.passage_vectors: dict[str, torch.Tensor] | None = None
        self._plans: list[StagePlan] = []
        self.peft: Any = None  # the PeftModel wrapper of model.lm when LoRA is on (apply_lora)

    # ------------------------------------------------------------------ setup
    def _resume_point(self) -> Path | None:
        cfg, out = self.cfg, self.out
        existing = ck.latest_checkpoint(out)
        if cfg.resume:
            if existing is None:
                log.warning(
                    "--resume: no checkpoint in %s yet; starting from the beginning", out / ck.CKPT_DIR
                )
            return existing
        if (existing is not None or (out / ck.FINAL_DIR).exists()) and not cfg.overwrite:
            what = f"checkpoints ({existing.name})" if existing is not None else "a finished run (final/)"
            raise UserError(
                f"{out} already holds {what}; pass --resume to continue that run, --overwrite to start over, "
                "or choose another --out"
            )
        return None

    def _build_model(self, ckpt: Path | None, mixture: Mixture, passages: dict[str, str]) -> ImpRAG:
        mc, cfg = self.cfg.model, self.cfg
        path = Path(mc.path) if not (ckpt is not None and not cfg.lora.enabled) else ckpt / "model"
        # every ModelConfig field but `path` is a from_pretrained argument (None: the checkpoint's or default)
        overrides = {f.name: getattr(mc, f.name) for f in dataclasses.fields(mc) if f.name != "path"}
        # the first process loads alone first so a conversion/cache is not raced by the others
        model = ImpRAG.from_pretrained(path, **overrides)
        model.lm.to(self.env.device)
        # before LoRA: it trains layer b's own weights (a LoRA checkpoint holds only adapters: redo it from
        # the cache on resume, deterministically)
        if cfg.cached_warmup.steps and (ckpt is None or cfg.lora.enabled):
            from imprag.train.retrieval_cache import run_cached_warmup

            self.passage_vectors = run_cached_warmup(
                model, cfg, mixture.retrieval, passages, self.env, self.out
            )
        elif model.config.calibration != "none" and model.calibration is None:
            self._calibrate(model, mixture, passages)
        if cfg.lora.enabled:
            from imprag.train.lora import apply_lora

            torch.manual_seed(cfg.seed)  # identical adapter init on every process
            self.peft = apply_lora(model, cfg.lora)
        model.gradient_checkpointing = cfg.gradient_checkpointing
        model.lm.train()
        return model

    def _calibrate(self, model: ImpRAG, mixture: Mixture, passages: dict[str, str]) -> None:
        """Calibration means from the current weights: a passage sample, and per format the training prompts
        (every process computes the same)."""
        from imprag.model.calibration import template_key

        if not passages or model.config.calibration == "none":
            return
        texts = list(passages.values())
        prompts: dict[str, list[str]] = {}
        for ex in (e for src in mixture.retrieval for e in src):
            prompts.setdefault(template_key(ex.prompt), []).append(ex.prompt)
        was_training = model.lm.training
        model.lm.eval()
        model.calibrate(texts, {k: v[:512] for k, v in prompts.items()}, max_passages=512, seed=self.cfg.seed)
        model.lm.train(was_training)

    def _wrap(self, objective: TrainObjective, model: ImpRAG) -> torch.nn.Module:
        env, strategy = self.env, self.cfg.distributed.strategy
        if not env.distributed:
            return objective
        if strategy == "fsdp":
            from imprag.train.fsdp import shard

            return shard(objective, model)
        import inspect

        from torch.nn.parallel import DistributedDataParallel as DDP

        # buffers (rotary tables) are the same everywhere: no per-forward broadcast
        no_sync = (
            "forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(DDP).parameters
            else "broadcast_buffers"
        )
        kwargs: dict[str, Any] = {
            "device_ids": [env.device.index] if env.device.type == "cuda" else None,
            "find_unused_parameters": True,  # a retrieval-only stage uses only the bottom layers
            no_sync: False,
        }
        return DDP(objective, **kwargs)

    def _optimizer(self, model: ImpRAG) -> torch.optim.Optimizer:
        o = self.cfg.optim
        params = [p for p in model.lm.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]  # norms and biases
        groups = [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps
        )
        init_optimizer_state(optimizer)
        return optimizer

    # ------------------------------------------------------------------ saving
    def _save_model_fn(self, model: ImpRAG, wrapped: torch.nn.Module):
        """A function dir -> None writing the ImpRAG folder (call on every process: FSDP gathers)."""
        from imprag.train.lora import merged_state_dict

        state_dict = None
        if self.cfg.distributed.strategy == "fsdp" and self.env.distributed:
            from imprag.train.fsdp import full_state_dict

            state_dict = full_state_dict(wrapped)
        elif self.peft is not None and self.env.is_main:
            state_dict = merged_state_dict(model)

        def save(directory: Path) -> None:
            model.save_pretrained(directory, state_dict=state_dict)

        return save

    def _save_checkpoint(self, step: int, run: _Run, info: dict[str, Any]) -> None:
        from imprag.train.lora import adapter_state

        model, wrapped, optimizer, scheduler = run.model, run.wrapped, run.optimizer, run.scheduler
        save_model = self._save_model_fn(model, wrapped)
        rng = self.env.all_gather_object(ck.rng_state())
        optim_state = self._optimizer_state(wrapped, optimizer)
        if self.env.is_main:
            state: dict[str, Any] = {
                "step": step,
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "rng": rng,
                "world_size": self.env.world_size,
            }
            if self.peft is not None:
                state["adapters"] = adapter_state(self.peft)
            ck.save_checkpoint(self.out, step, save_model, state, info, self.cfg.keep_checkpoints)
        self.env.barrier()

    def _optimizer_state(self, wrapped, optimizer):
        if self.cfg.distributed.strategy == "fsdp" and self.env.distributed:
            from imprag.train.fsdp import full_optimizer_state

            return full_optimizer_state(wrapped, optimizer)
        return optimizer.state_dict()

    def _load_optimizer_state(self, wrapped, optimizer, state) -> None:
        if self.cfg.distributed.strategy == "fsdp" and self.env.distributed:
            from imprag.train.fsdp import load_full_optimizer_state

            load_full_optimizer_state(wrapped, optimizer, state)
        else:
            optimizer.load_state_dict(state)

    # ------------------------------------------------------------------ metrics
    def _metrics_rows(self, upto: int) -> None:
        """Keep the rows of steps <= `upto` (a resumed run rewrites what a killed run logged after its
        last checkpoint)."""
        path = self.out / METRICS
        if not path.exists():
            return
        rows = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
            if row.get("step", 0) <= upto:
                rows.append(row)
        atomic_write_jsonl(path, rows)

    def _append_metrics(self, row: dict[str, Any]) -> None:
        with (self.out / METRICS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    # ------------------------------------------------------------------ run
    def run(self) -> Path:
        final = self.out / ck.FINAL_DIR
        if self.cfg.resume and final.exists():  # final/ is written last and removed by a fresh start
            log.info("%s: this run already finished; nothing to resume", final)
            return final
        ckpt = self._resume_point()
        run = self._setup(ckpt)
        self._start_output(ckpt, run)
        done, plan, last_log = self._loop(run)
        self._finish(run, done, plan, last_log, final)
        return final

    def _setup(self, ckpt: Path | None) -> _Run:
        """Data, model, optimizer and schedule, restored from `ckpt` when resuming."""
        cfg, env = self.cfg, self.env
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        passages = load_passages(cfg.data.passages, cfg.data.on_error) if cfg.data.passages else {}
        mixture = Mixture(cfg, passages)
        plans = mixture.plan(env.world_size)
        self._plans = plans
        total_steps = plans[-1].end if plans else 0  # no stages: the cached warmup alone
        model = self._build_model(ckpt, mixture, passages)
        collator = Collator(
            model.tokenizer,
            cfg.data.max_prompt_tokens,
            cfg.data.max_response_tokens,
            cfg.data.max_text_tokens,
        )
        objective = TrainObjective(model, cfg, collator, passages, env)
        wrapped = self._wrap(objective, model)
        optimizer = self._optimizer(model)
        o = cfg.optim
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lr_lambda(
                total_steps,
                o.warmup_steps,
                o.schedule,
                o.min_lr_ratio,
                [(p.start, p.config.lr_scale) for p in plans],
            ),
        )
        dev = None
        if cfg.eval.dev:
            from imprag.train.evaluate import load_dev

            dev = load_dev(cfg.eval, passages, cfg.data.on_error)
        run = _Run(passages, mixture, plans, total_steps, model, wrapped, optimizer, scheduler, dev)
        if ckpt is None:
            torch.manual_seed(cfg.seed + env.rank)  # per-process dropout streams
            return run
        state, info = ck.load_trainer_state(ckpt)
        if state.get("world_size", 1) != env.world_size:
            log.warning(
                "resuming a %d-process run on %d processes: the data order is the same, RNG streams differ",
                state.get("world_size", 1),
                env.world_size,
            )
        if cfg.lora.enabled:
            from imprag.train.lora import load_adapter_state

            load_adapter_state(self.peft, state["adapters"])
        self._load_optimizer_state(wrapped, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rngs = state["rng"]
        ck.set_rng_state(rngs[env.rank] if env.rank < len(rngs) else rngs[0])
        run.start = int(state["step"])
        run.tokens_done = int(info.get("tokens", 0))
        run.elapsed_before = float(info.get("elapsed", 0.0))
        log.info("resumed from %s at step %d of %d", ckpt, run.start, total_steps)
        return run

    def _start_output(self, ckpt: Path | None, run: _Run) -> None:
        """Rank 0: clear a replaced run's files, keep the resumed run's metrics rows, log the stages."""
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            if ckpt is None:  # a fresh start (--overwrite, or nothing to resume): drop the old run's files
                shutil.rmtree(self.out / ck.CKPT_DIR, ignore_errors=True)
                shutil.rmtree(self.out / ck.FINAL_DIR, ignore_errors=True)
                (self.out / METRICS).unlink(missing_ok=True)
            self._metrics_rows(run.start)
            atomic_write_json(self.out / "train_config.json", to_dict(self.cfg))
            for p in run.plans:
                log.info(
                    "stage %d %s (%s): steps %d-%d, batch %d (%s), lm_weight %g, lambda %g",
                    p.index,
                    p.config.name,
                    p.config.objective,
                    p.start + 1,
                    p.end,
                    p.batch_size,
                    ", ".join(f"{g} {n}" for g, n in p.counts.items() if n),
                    p.config.lm_weight,
                    p.config.retrieval_weight,
                )
        self.env.barrier()

    def _loop(self, run: _Run) -> tuple[int, StagePlan | None, dict[str, Any]]:
        """The optimizer steps from run.start -> (steps done, last stage, last metrics row)."""
        cfg, env = self.cfg, self.env
        total_steps, tokens_done = run.total_steps, run.tokens_done
        bar = None
        if env.is_main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total_steps, initial=run.start, desc="train", unit="step", dynamic_ncols=True)
        t0 = time.perf_counter()
        window_tokens, window_t = 0, time.perf_counter()
        plan_of = {s: p for p in run.plans for s in range(p.start, p.end)}
        last_log: dict[str, Any] = {}
        done, plan = run.start, (run.plans[-1] if run.plans else None)  # what the final evaluation reports
        try:
            for step in range(run.start, total_steps):
                plan = plan_of[step]
                row = self._train_step(step, plan, run)
                tokens_done += row.pop("_tokens")
                window_tokens += row.pop("_local_tokens")
                now = time.perf_counter()
                done = step + 1
                if env.is_main:
                    elapsed = run.elapsed_before + now - t0
                    rate = window_tokens / max(now - window_t, 1e-9)
                    row.update(
                        {"tokens": tokens_done, "tokens_per_s": round(rate, 1), "elapsed": round(elapsed, 3)}
                    )
                    if done % cfg.log_every == 0 or done == total_steps:
                        self._append_metrics(row)
                    last_log = row
                    if bar is not None:
                        post = {"stage": plan.config.name, "loss": f"{row['loss']:.4f}"}
                        post.update({p: f"{row[p]:.4f}" for p in PARTS if p in row})
                        post["tok/s"] = f"{rate:.0f}"
                        bar.set_postfix(post, refresh=False)
                        bar.update(1)
                window_tokens, window_t = 0, now
                info = {
                    "step": done,
                    "stage": plan.config.name,
                    "tokens": tokens_done,
                    "elapsed": round(run.elapsed_before + now - t0, 3),
                }
                if (
                    run.dev is not None
                    and cfg.eval.every
                    and done % cfg.eval.every == 0
                    and done < total_steps
                ):
                    self._evaluate(run, done, plan)
                if cfg.save_every and done % cfg.save_every == 0 and done < total_steps:
                    self._save_checkpoint(done, run, info)
                if done < total_steps and self._out_of_time(info["elapsed"]):
                    log.warning(
                        "max_minutes=%g reached after step %d of %d: saving the model as it stands",
                        cfg.max_minutes,
                        done,
                        total_steps,
                    )
                    break
        finally:
            if bar is not None:
                bar.close()
        return done, plan, last_log

    def _finish(
        self, run: _Run, done: int, plan: StagePlan | None, last_log: dict[str, Any], final: Path
    ) -> None:
        """Fresh calibration means when the states moved, the last evaluation, then final/ (rank 0)."""
        cfg, env, model = self.cfg, self.env, run.model
        if self._retrieval_moved(done) and model.config.calibration != "none":
            ctx: Any = nullcontext()
            if cfg.distributed.strategy == "fsdp" and env.distributed:
                from imprag.train.fsdp import unsharded

                ctx = unsharded(run.wrapped)  # every process gathers the root's weights, as _evaluate does
            with ctx:
                self._calibrate(model, run.mixture, run.passages)
        if run.dev is not None:
            self._evaluate(run, done, plan)
        save_model = self._save_model_fn(model, run.wrapped)
        if env.is_main:
            ck.write_dir_atomically(final, self._with_index_vectors(save_model, model, run.passages, done))
            log.info(
                "final model in %s (last step: %s)",
                final,
                {k: last_log.get(k) for k in ("loss", *PARTS) if k in last_log},
            )
        env.barrier()

    def _with_index_vectors(self, save, model: ImpRAG, passages: dict[str, str], step: int):
        """`save`, plus the cached warmup's passage vectors when they are still the model's index vectors
        (no later stage moved the retrieval path): `imprag index` then skips those passages."""
        sharded = self.cfg.distributed.strategy == "fsdp" and self.env.distributed
        if self.passage_vectors is None or self._retrieval_moved(step) or sharded or self.peft is not None:
            return save
        from imprag.index.stored_vectors import save_passage_vectors

        ids = list(self.passage_vectors)
        texts = [passages[i] for i in ids]
        vectors = torch.stack([self.passage_vectors[i] for i in ids])  # (N, D)
        fingerprint = model.fingerprint()

        def save_with_vectors(directory: Path) -> None:
            save(directory)
            save_passage_vectors(directory, texts, vectors, fingerprint, model.config.l_max)

        return save_with_vectors

    def _retrieval_moved(self, step: int) -> bool:
        """Did a stage that can change the retrieval path run before `step`?"""
        return any(not p.config.freeze_retrieval for p in self._plans if p.start < step)

    def _out_of_time(self, elapsed_s: float) -> bool:
        """True once `max_minutes` of training time have passed on any process (all agree, so all stop)."""
        if self.cfg.max_minutes is None:
            return False
        over = torch.tensor([float(elapsed_s > 60 * self.cfg.max_minutes)], device=self.env.device)
        return bool(self.env.all_reduce_sum(over).item() > 0)

    def _evaluate(self, run: _Run, step: int, plan: StagePlan | None) -> None:
        from imprag.train.evaluate import dev_recall

        fsdp = self.cfg.distributed.strategy == "fsdp" and self.env.distributed
        result = None
        if fsdp or self.env.is_main:
            ctx: Any = nullcontext()
            if fsdp:
                from imprag.train.fsdp import unsharded

                ctx = unsharded(run.wrapped)
            with ctx, autocast_context(self.env.device, self.cfg.precision):
                vectors = None if self._retrieval_moved(step) else self.passage_vectors
                result = dev_recall(run.model, run.dev, self.cfg.eval.k, passage_vectors=vectors)
        if self.env.is_main and result is not None:
            log.info("dev at step %d: %s", step, ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
            stage = plan.config.name if plan is not None else "cached_warmup"
            self._append_metrics({"step": step, "stage": stage, "eval": result})
        self.env.barrier()

    def _train_step(self, step: int, plan: StagePlan, run: _Run) -> dict:
        cfg, env = self.cfg, self.env
        model, wrapped, optimizer = run.model, run.wrapped, run.optimizer
        stage = plan.config
        slots = run.mixture.step_batch(plan, step)
        micros = micro_batches(slots, plan.grad_accum, env.world_size, env.rank)
        sums: dict[str, float] = {}
        local_tokens = 0.0
        ddp = env.distributed and cfg.distributed.strategy == "ddp"
        fsdp = env.distributed and cfg.distributed.strategy == "fsdp"
        for i, (micro, lo, hi) in enumerate(micros):
            last = i == len(micros) - 1
            if fsdp:
                wrapped.set_requires_gradient_sync(last)  # type: ignore[operator]
            sync = wrapped.no_sync() if ddp and not last else nullcontext()  # type: ignore[operator]
            with sync:
                with autocast_context(env.device, cfg.precision):
                    parts = wrapped(micro, lo, hi, stage)
                (parts["loss"] / len(micros)).backward()
            local_tokens += float(parts["tokens"])
            for name in PARTS:
                if name in parts:
                    sums[name] = sums.get(name, 0.0) + float(parts[name]) / len(micros)
        if stage.freeze_retrieval:  # no gradient: AdamW skips the parameter (no moment, no decay)
            for module in model.retrieval_modules():
                for p in module.parameters():
                    p.grad = None
        if cfg.optim.grad_clip > 0:
            params = [p for p in model.lm.parameters() if p.requires_grad]
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            if hasattr(norm, "full_tensor"):
                norm = norm.full_tensor()
            grad_norm = float(norm)
        else:
            grad_norm = float("nan")
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total_tokens = int(env.all_reduce_sum(torch.tensor(local_tokens, device=env.device)).item())
        row: dict[str, Any] = {"step": step + 1, "stage": stage.name}
        loss = 0.0
        if "lm" in sums:
            loss += stage.lm_weight * sums["lm"]
        for name in ("nce", "distill"):
            if name in sums:
                loss += stage.retrieval_weight * sums[name]
        row["loss"] = loss
        row.update({k: v for k, v in sums.items()})
        row.update({"lr": lr, "grad_norm": grad_norm, "_tokens": total_tokens, "_local_tokens": total_tokens})
        return row
