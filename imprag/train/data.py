"""Training data: loading the sources and the deterministic mixture of each optimizer step.

Three groups feed a batch: retrieval examples (mined candidates: retrieval losses + J_gen), retrieval-free
task examples (J_gen only) and plain passages (J_gen over the whole text). The batch of step s is a pure
function of (seed, s): each group is an endless stream of epochs (a seeded permutation per epoch), every
step takes a fixed count from each group, and hard negatives are drawn with a generator seeded by the
stream position. So resuming needs only the step number, and every process builds the same global batch
and takes its own slice.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from imprag.data.example import Example
from imprag.data.tasks import get_task, task_for_file
from imprag.errors import UserError
from imprag.io import iter_jsonl
from imprag.passage import read_passages
from imprag.train.config import SourceConfig, StageConfig, TrainConfig

log = logging.getLogger(__name__)

GROUPS = ("retrieval", "retrieval_free", "plain_text")


@dataclass
class RetrievalExample:
    id: str
    task: str
    prompt: str
    answer: str  # the gold response trained on (first answer)
    candidates: list[str]  # passage ids, best first (deduplicated)
    gold: list[str] = field(default_factory=list)
    source: str = ""  # file:line


@dataclass
class LMExample:
    id: str
    task: str
    prompt: str  # "" for plain text
    response: str
    source: str = ""
    plain: bool = False  # plain text: every token is a target
    read: list[str] = field(default_factory=list)  # passage ids read by the middle layers (read_provenance)
    distractors: bool = True  # `read` is filled up to data.read_passages with other passages


@dataclass
class Slot:
    """One example of a step's global batch."""

    group: str  # one of GROUPS
    example: RetrievalExample | LMExample
    negatives: list[str] = field(default_factory=list)  # sampled hard negatives (retrieval only)

    @property
    def is_retrieval(self) -> bool:
        return self.group == "retrieval"

    @property
    def reads(self) -> bool:
        """A J_gen-only row that reads its own passages (read_provenance)."""
        return isinstance(self.example, LMExample) and bool(self.example.read)


def _on_error_hint(e: UserError) -> UserError:
    return UserError(str(e).replace("--on-error skip", "--data.on_error skip"))


def load_passages(path: str | Path, on_error: str = "fail") -> dict[str, str]:
    """passages JSONL -> {id: model text (passage_text)} in file order."""
    ids, texts = read_passages(path, on_error, flag="--data.passages", skip_flag="--data.on_error skip")
    return dict(zip(ids, texts))


def load_mined(
    src: SourceConfig, passages: dict[str, str], on_error: str = "fail", where: str = "data.retrieval"
) -> list[RetrievalExample]:
    """Rows written by `imprag mine`: {"id","task","prompt","answers","gold_passage_ids","candidates",...}."""
    path = Path(src.path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (check --{where}.path)")
    forced = get_task(src.task).name if src.task else None
    out: list[RetrievalExample] = []
    try:
        for lineno, obj in iter_jsonl(path, on_error):
            at = f"{path}:{lineno}"
            try:
                out.append(_mined_row(obj, at, forced, passages))
            except UserError as e:
                if on_error == "fail":
                    raise
                log.warning("skipping %s", e)
                continue
            if src.limit is not None and len(out) >= src.limit:
                break
    except UserError as e:
        raise _on_error_hint(e) from None
    if not out:
        raise UserError(f"{path}: no usable examples (check --{where}.path)")
    return out


def _mined_row(obj: dict, at: str, forced: str | None, passages: dict[str, str]) -> RetrievalExample:
    hint = " (fix the line, or pass --data.on_error skip)"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{at}: no `prompt`; is this a file written by `imprag mine`?{hint}")
    task_name = obj.get("task", forced)
    if task_name is None:
        raise UserError(f"{at}: no `task`; set --data.retrieval.N.task for this file")
    try:
        spec = get_task(str(task_name))
    except UserError as e:
        raise UserError(f"{at}: {e}") from None
    if forced is not None and spec.name != forced:
        raise UserError(f"{at}: task {spec.name!r} differs from the configured task {forced!r}{hint}")
    if not spec.needs_retrieval:
        raise UserError(
            f"{at}: task {spec.name!r} needs no retrieval; list its task file under data.retrieval_free instead"
        )
    answers = obj.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not any(isinstance(a, str) and a.strip() for a in answers):
        raise UserError(
            f"{at}: example has no gold answers (`answers` must be a non-empty list of strings){hint}"
        )
    answer = next(spec.to_model_answer(a) for a in answers if isinstance(a, str) and a.strip())
    cands = obj.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise UserError(f"{at}: `candidates` must be a non-empty list of passage ids{hint}")
    seen: set[str] = set()
    candidates: list[str] = []
    for c in cands:
        c = str(c)
        if c not in passages:
            raise UserError(
                f"{at}: candidate {c!r} is not in --data.passages (were the candidates mined from another file?)"
            )
        if c not in seen:
            seen.add(c)
            candidates.append(c)
    gold = [str(g) for g in obj.get("gold_passage_ids") or [] if str(g) in passages]
    return RetrievalExample(str(obj.get("id", at)), spec.name, prompt, answer, candidates, gold, at)


def load_retrieval_free(
    src: SourceConfig, on_error: str, where: str, passages: dict[str, str] | None = None
) -> list[LMExample]:
    from imprag.data.kilt import load_examples

    path = Path(src.path)
    if not path.is_file():
        raise UserError(f"{path}: file not found (check --{where}.path)")
    name = src.task or task_for_file(path)
    if name is None:
        raise UserError(f"{path}: cannot tell the task from the file name; set --{where}.task")
    try:
        spec = get_task(name)
    except UserError as e:
        raise UserError(f"--{where}.task: {e}") from None
    if spec.needs_retrieval:
        raise UserError(
            f"--{where}: task {spec.name!r} needs retrieval; mine candidates for it (`imprag mine`) and list "
            "the mined file under data.retrieval"
        )
    try:
        examples = load_examples(path, spec, on_error=on_error, require_answers=True, limit=src.limit)
    except UserError as e:
        raise _on_error_hint(e) from None
    if not examples:
        raise UserError(f"{path}: no examples (check --{where}.path)")
    out = [LMExample(ex.id, ex.task, ex.prompt, ex.answers[0], ex.source) for ex in examples]
    if not src.read_provenance:
        return out
    kept = []
    for lm, ex in zip(out, examples):
        try:
            lm.read = _provenance_ids(ex, passages or {}, where)
            lm.distractors = src.read_distractors
        except UserError as e:
            if on_error == "fail":
                raise
            log.warning("skipping %s", e)
            continue
        kept.append(lm)
    if not kept:
        raise UserError(f"{path}: no example has a provenance passage to read (check --{where}.path)")
    return kept


def _provenance_ids(ex: Example, passages: dict[str, str], where: str) -> list[str]:
    """The example's provenance passage ids (distinct, in order); each must be in `passages`."""
    ids = list(dict.fromkeys(p.passage_id for p in ex.provenance if p.passage_id is not None))
    hint = "(fix the line, or pass --data.on_error skip)"
    if not ids:
        raise UserError(f"{ex.source}: no provenance passage_id to read (--{where}.read_provenance) {hint}")
    missing = next((i for i in ids if i not in passages), None)
    if missing is not None:
        raise UserError(
            f"{ex.source}: provenance passage {missing!r} is not in --data.passages (--{where}.read_provenance) "
            f"{hint}"
        )
    return ids


@dataclass
class StagePlan:
    """Where a stage sits in the run and what each of its steps draws."""

    index: int
    config: StageConfig
    start: int  # first global step (0-based)
    steps: int
    batch_size: int
    grad_accum: int
    counts: dict[str, int]  # examples per step from each group
    offsets: dict[str, int]  # stream position of each group at the stage's first step

    @property
    def end(self) -> int:
        return self.start + self.steps


class Mixture:
    """The loaded groups and the deterministic global batch of every step."""

    def __init__(self, config: TrainConfig, passages: dict[str, str]):
        d = config.data
        self.config = config
        self.seed = config.seed
        self.passages = passages
        self.retrieval: list[list[RetrievalExample]] = [
            load_mined(s, passages, d.on_error, f"data.retrieval.{i}") for i, s in enumerate(d.retrieval)
        ]
        self.retrieval_free: list[list[LMExample]] = [
            load_retrieval_free(s, d.on_error, f"data.retrieval_free.{i}", passages)
            for i, s in enumerate(d.retrieval_free)
        ]
        self.texts: list[LMExample] = (
            [
                LMExample(pid, "lm", "", text, f"{d.passages}:{pid}", plain=True)
                for pid, text in passages.items()
            ]
            if d.plain_text_ratio > 0
            else []
        )
        # one epoch of each group: (source index, example index) repeated by the sources' weights
        self._base = {
            "retrieval": self._weighted([len(x) for x in self.retrieval], [s.weight for s in d.retrieval]),
            "retrieval_free": self._weighted(
                [len(x) for x in self.retrieval_free], [s.weight for s in d.retrieval_free]
            ),
            "plain_text": [(0, i) for i in range(len(self.texts))],
        }
        self._epochs: dict[tuple[str, int], list[tuple[int, int]]] = {}
        n_short = sum(len(ex.candidates) < d.negative_ranks[0] for src in self.retrieval for ex in src)
        if n_short and d.hard_negatives:
            log.warning(
                "%d retrieval examples have fewer than %d candidates: they get no hard negatives "
                "(mine with a larger --top-k)",
                n_short,
                d.negative_ranks[0],
            )

    @staticmethod
    def _weighted(sizes: list[int], weights: list[float]) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for s, (n, w) in enumerate(zip(sizes, weights)):
            whole, frac = int(w), w - int(w)
            out += [(s, i) for _ in range(whole) for i in range(n)]
            if frac > 0:  # a fixed seeded subset for the fractional part
                out += [(s, i) for i in sorted(random.Random(1000 + s).sample(range(n), round(frac * n)))]
        return out

    def size(self, group: str) -> int:
        return len(self._base[group])

    def _epoch(self, group: str, epoch: int) -> list[tuple[int, int]]:
        key = (group, epoch)
        if key not in self._epochs:
            order = list(self._base[group])
            random.Random(_mix(self.seed, GROUPS.index(group), epoch)).shuffle(order)
            if len(self._epochs) > 64:
                self._epochs.clear()
            self._epochs[key] = order
        return self._epochs[key]

    def _item(self, group: str, position: int) -> tuple[RetrievalExample | LMExample, int]:
        n = self.size(group)
        src, idx = self._epoch(group, position // n)[position % n]
        if group == "retrieval":
            return self.retrieval[src][idx], position
        if group == "retrieval_free":
            return self.retrieval_free[src][idx], position
        return self.texts[idx], position

    # ------------------------------------------------------------------ stages
    def plan(self, world_size: int) -> list[StagePlan]:
        cfg = self.config
        plans: list[StagePlan] = []
        start = 0
        offsets = dict.fromkeys(GROUPS, 0)
        for i, st in enumerate(cfg.stages):
            bs = st.batch_size or cfg.optim.batch_size
            accum = st.grad_accum or cfg.optim.grad_accum
            if bs % (accum * world_size):
                raise UserError(
                    f"stages.{i} ({st.name}): batch size {bs} must be divisible by grad_accum ({accum}) x "
                    f"processes ({world_size}); set --stages.{i}.batch_size or --optim.batch_size"
                )
            counts = self._counts(st, bs, i)
            if st.steps is not None:
                steps = st.steps
            else:
                assert st.epochs is not None
                main = "retrieval" if counts["retrieval"] else max(counts, key=lambda g: counts[g])
                per_epoch = math.ceil(self.size(main) / counts[main])
                steps = max(1, math.ceil(st.epochs * per_epoch))
            plans.append(StagePlan(i, st, start, steps, bs, accum, counts, dict(offsets)))
            for g in GROUPS:
                offsets[g] += steps * counts[g]
            start += steps
        return plans

    def _counts(self, st: StageConfig, batch_size: int, index: int) -> dict[str, int]:
        d = self.config.data
        if st.lm_weight == 0:  # retrieval only: LM-only examples would contribute nothing
            ratios = {"retrieval": 1.0, "retrieval_free": 0.0, "plain_text": 0.0}
        else:
            ratios = {  # the stage's own shares where it sets them
                g: r if (r := getattr(st, f"{g}_ratio")) is not None else getattr(d, f"{g}_ratio")
                for g in GROUPS
            }
        ratios = {g: (r if self.size(g) else 0.0) for g, r in ratios.items()}
        total = sum(ratios.values())
        if total <= 0:
            raise UserError(
                f"stages.{index} ({st.name}): no data to draw from (give data.retrieval files, "
                "data.retrieval_free files, or a positive data.plain_text_ratio)"
            )
        # largest remainder: fixed per-step counts that sum to the batch size
        exact = {g: batch_size * r / total for g, r in ratios.items()}
        counts = {g: int(v) for g, v in exact.items()}
        for g in sorted(GROUPS, key=lambda g: exact[g] - counts[g], reverse=True)[
            : batch_size - sum(counts.values())
        ]:
            counts[g] += 1
        if st.objective != "lm" and st.retrieval_weight > 0 and counts["retrieval"] == 0:
            raise UserError(
                f"stages.{index} ({st.name}): no retrieval examples per step; raise --data.retrieval_ratio or "
                f"--stages.{index}.batch_size"
            )
        return counts

    def step_batch(self, plan: StagePlan, step: int) -> list[Slot]:
        """The global batch of optimizer step `step` (inside `plan`), in a seeded order."""
        d = self.config.data
        j = step - plan.start
        slots: list[Slot] = []
        for g in GROUPS:
            for r in range(plan.counts[g]):
                ex, pos = self._item(g, plan.offsets[g] + j * plan.counts[g] + r)
                negatives: list[str] = []
                if g == "retrieval" and d.hard_negatives:
                    assert isinstance(ex, RetrievalExample)
                    negatives = self.sample_negatives(ex, pos)
                slots.append(Slot(g, ex, negatives))
        random.Random(_mix(self.seed, 7, step)).shuffle(slots)
        return slots

    def sample_negatives(self, ex: RetrievalExample, position: int) -> list[str]:
        d = self.config.data
        lo, hi = d.negative_ranks
        exclude = set(ex.candidates[: d.positives]) | set(ex.gold)
        pool = [c for c in ex.candidates[lo - 1 : hi] if c not in exclude]
        rng = random.Random(_mix(self.seed, 11, position))
        return rng.sample(pool, min(d.hard_negatives, len(pool)))


def _mix(*parts: int) -> int:
    """A stable integer seed from several integers (Python's hash of tuples is salted per process)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def micro_batches(slots: list[Slot], accum: int, world: int, rank: int) -> list[tuple[list[Slot], int, int]]:
    """Split a step's global batch into `accum` micro-batches; each is (global slots, lo, hi) where
    [lo, hi) is this process's contiguous share (process order = gathered order)."""
    n = len(slots) // accum
    out = []
    for m in range(accum):
        micro = slots[m * n : (m + 1) * n]
        per = len(micro) // world
        out.append((micro, rank * per, (rank + 1) * per))
    return out
