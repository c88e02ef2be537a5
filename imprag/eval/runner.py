"""`imprag eval` as a library: run one method over one or more task files, in resumable batches.

Layout of the output folder:

    out/run.json                     the settings every reused batch must share (method, model, k, ...)
    out/batches/<task>/NNNNN.jsonl   one finished batch each, written atomically (the unit of resume)
    out/predictions.jsonl            KILT predictions (several files: out/<task>/predictions.jsonl)
    out/metrics.json                 per task: EM, F1 / accuracy, answer recall@k, R-precision, ...
    out/table.md                     the same as a markdown table

A batch file is reused when its rows carry the same ids and prompts as the batch about to run, so an
interrupted run (or a rerun with a larger --limit) redoes only what is missing. Every file is written
atomically; the predictions, metrics and table appear only once every batch is done.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from imprag.data.example import Example
from imprag.data.kilt import load_examples, write_predictions
from imprag.data.tasks import TASKS, TaskSpec, get_task, task_for_file
from imprag.errors import UserError
from imprag.eval.methods import METHODS, Method, MethodOutput, make_method
from imprag.eval.metrics import MATCH_MODES, NORMALIZATIONS, aggregate, score_example
from imprag.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json
from imprag.model.window import context_window, prompt_budget

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
TABLE_FILE = "table.md"
PREDICTIONS_FILE = "predictions.jsonl"
BATCH_DIR = "batches"
DEFAULT_KS = (1, 5, 10)
DECODING = (
    "greedy; answer = the first line of the generation that has text (leading newlines skipped), stripped"
)
FEVER_DECISION = {
    "likelihood": "FEVER: True when the claim's log-likelihood given the method's evidence is above the "
    "method's threshold, fitted on true/false statements built from the corpus (closed-book: as label)",
    "label": "FEVER: the label (True/False) whose first token the model scores higher, one step",
}
MATCH_NOTE = {
    "word": "answer recall: a normalised gold answer occurs on word boundaries inside a passage's "
    "normalised `title: text` (KILT normalisation plus folded accents and Unicode punctuation; "
    "`imprag.eval.metrics.has_answer`, match=word)",
    "substring": "answer recall: a normalised gold answer occurs anywhere inside a passage's normalised "
    "`title: text` (accents and Unicode punctuation folded; match=substring; over-counts short answers)",
}
NORMALIZATION_NOTE = {
    "kilt": "EM/F1: official KILT/SQuAD normalisation (lowercase, delete ASCII punctuation, drop a/an/the, "
    "collapse whitespace)",
    "unicode": "EM/F1: KILT normalisation with accents and Unicode punctuation folded (--normalize unicode; "
    "not comparable with published numbers)",
}


@dataclass
class EvalConfig:
    """Every `imprag eval` flag."""

    model: Path
    data: list[Path]
    method: str
    out: Path
    tasks: list[str] | None = None  # one per file, or one for all; None = guessed from each file name
    index: Path | None = None
    passages: Path | None = None
    k: int | None = None  # passages per question; None = the model's k
    limit: int | None = None  # first N examples of each file
    batch_size: int = 8
    max_new_tokens: int = 32
    match: str = "word"
    query_calibration: str = (
        "prompts"  # imprag: each format's query mean from the task's prompts, or "stored"
    )
    normalization: str = "kilt"  # EM/F1: "kilt" (official) or "unicode"
    on_error: str = "fail"
    cache_dir: Path | None = None  # retriever cache (BM25 / dense embeddings)
    allow_fingerprint_mismatch: bool = False
    device: str | None = None
    model_dtype: str = "float32"
    precision: str = "fp32"  # "bf16": decoding under bf16 autocast (retrieval vectors stay fp32)
    fever: str = "likelihood"  # how FEVER claims are decided: FEVER_DECISION
    show_progress: bool = True

    def __post_init__(self) -> None:
        self.model = Path(self.model)
        self.out = Path(self.out)
        self.data = [Path(d) for d in self.data]
        self.index = None if self.index is None else Path(self.index)
        self.passages = None if self.passages is None else Path(self.passages)
        if self.method not in METHODS:
            raise UserError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if not self.data:
            raise UserError("--data: give at least one task file")
        for name in ("batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.k is not None and self.k < 1:
            raise UserError(f"-k must be >= 1, got {self.k}")
        if self.limit is not None and self.limit < 1:
            raise UserError(f"--limit must be >= 1, got {self.limit}")
        if self.fever not in FEVER_DECISION:
            raise UserError(f"--fever must be one of {', '.join(FEVER_DECISION)}, got {self.fever!r}")
        if self.query_calibration not in ("prompts", "stored"):
            raise UserError(f"--query-calibration must be prompts or stored, got {self.query_calibration!r}")
        if self.match not in MATCH_MODES:
            raise UserError(f"--match must be one of {', '.join(MATCH_MODES)}, got {self.match!r}")
        if self.normalization not in NORMALIZATIONS:
            raise UserError(
                f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}"
            )
        if self.tasks is not None and len(self.tasks) not in (1, len(self.data)):
            raise UserError(
                f"--task: give one task for all files or one per file ({len(self.data)} files, {len(self.tasks)} tasks)"
            )
        for d in self.data:
            if not d.is_file():
                raise UserError(f"{d}: task file not found (check --data)")
        if self.method == "imprag" and self.index is None:
            raise UserError(
                "--method imprag needs --index (an index built by this model with `imprag index`)"
            )
        if self.index is not None and not (self.index / "metadata.json").exists():
            raise UserError(
                f"{self.index}: not an index folder (metadata.json missing; build it with `imprag index`)"
            )
        if self.passages is not None and not self.passages.is_file():
            raise UserError(f"{self.passages}: passages file not found (check --passages)")


@dataclass
class TaskRun:
    """One task file of a run: its examples and where its outputs go."""

    name: str  # folder name: the task name, or task-<file stem> when two files share a task
    spec: TaskSpec
    file: Path
    examples: list[Example] = field(default_factory=list)


def recall_ks(k: int) -> list[int]:
    """1, 5, 10 up to k, plus k itself."""
    return sorted({x for x in DEFAULT_KS if x <= k} | {k})


def plan_tasks(cfg: EvalConfig) -> list[TaskRun]:
    """Resolve each file's task and read its examples (gold answers required)."""
    runs: list[TaskRun] = []
    for i, path in enumerate(cfg.data):
        name = None
        if cfg.tasks is not None:
            name = cfg.tasks[i] if len(cfg.tasks) > 1 else cfg.tasks[0]
        name = name or task_for_file(path)
        if name is None:
            raise UserError(
                f"{path}: cannot tell the task from the file name; pass --task (one of {', '.join(TASKS)})"
            )
        spec = get_task(name)
        examples = load_examples(
            path, spec, on_error=cfg.on_error, require_answers=True, unique_ids=True, limit=cfg.limit
        )
        if not examples:
            raise UserError(f"{path}: no examples in the file")
        runs.append(TaskRun(spec.name, spec, path, examples))
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.spec.name) > 1:
            r.name = f"{r.spec.name}-{r.file.stem}"
    if len({r.name for r in runs}) != len(runs):
        raise UserError("--data: the same file (or two files of one name and task) given twice")
    return runs


def _stat_id(path: Path) -> dict[str, Any]:
    p = path.resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def model_identity(path: Path) -> str:
    """Hash of the model folder's files (names, sizes, mtimes) or of the single .gguf file."""
    p = path.resolve()
    files = sorted(x for x in p.iterdir() if x.is_file()) if p.is_dir() else [p]
    raw = json.dumps([_stat_id(f) for f in files], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def run_settings(cfg: EvalConfig, model: Any, k: int, index: Any, passages: Path | None) -> dict[str, Any]:
    """What a reused batch must share with this run."""
    return {
        "method": cfg.method,
        "model": str(cfg.model.resolve()),
        "model_identity": model_identity(cfg.model),
        "model_config": dataclasses.asdict(model.config),
        "k": k,
        "max_new_tokens": cfg.max_new_tokens,
        "decoding": decoding(cfg),
        "query_calibration": cfg.query_calibration if cfg.method == "imprag" else None,
        "index": None
        if index is None
        else {"dir": str(Path(index.dir).resolve()), "fingerprint": index.fingerprint, "count": len(index)},
        "passages": None if passages is None else _stat_id(passages),
    }


def _check_run_file(out: Path, settings: dict[str, Any]) -> None:
    """Refuse an output folder that holds batches of a run with other settings."""
    path = out / RUN_FILE
    if path.exists():
        old = read_json(path).get("settings", {})
        if old != settings:
            diffs = [k for k in settings if old.get(k) != settings[k]]
            raise UserError(
                f"{out}: holds a run with other settings ({', '.join(diffs) or 'format'} differ); "
                "use another --out, or delete the folder to start over"
            )


def _batch_rows(examples: list[Example], outputs: list[MethodOutput]) -> list[dict[str, Any]]:
    return [
        {
            "id": ex.id,
            "prompt": ex.prompt,
            "answer": o.answer,
            "generation": o.text,
            "finish_reason": o.finish_reason,
            "passages": o.passages,
        }
        for ex, o in zip(examples, outputs)
    ]


def _read_batch(path: Path, examples: list[Example]) -> list[dict[str, Any]] | None:
    """The rows of a finished batch file when they are this batch's (same ids and prompts), else None."""
    if not path.exists():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    if [(r.get("id"), r.get("prompt")) for r in rows] != [(e.id, e.prompt) for e in examples]:
        return None
    return rows


def run_task(
    method: Method, task: TaskRun, out: Path, batch_size: int, max_new_tokens: int, show_progress: bool
) -> tuple[list[dict[str, Any]], int]:
    """All rows of one task in example order (reused or computed) and how many batches were reused."""
    folder = out / BATCH_DIR / task.name
    rows: list[dict[str, Any]] = []
    reused = 0
    n = len(task.examples)
    method.prepare(task.examples, task.spec)
    with tqdm(total=n, desc=f"{method.name} {task.name}", unit="ex", disable=not show_progress) as bar:
        for b, start in enumerate(range(0, n, batch_size)):
            batch = task.examples[start : start + batch_size]
            path = folder / f"{b:05d}.jsonl"
            got = _read_batch(path, batch)
            if got is None:
                got = _batch_rows(batch, method.run(batch, task.spec, max_new_tokens))
                atomic_write_jsonl(path, got)
            else:
                reused += 1
            rows.extend(got)
            bar.update(len(batch))
    return rows, reused


def score_rows(
    task: TaskRun,
    rows: list[dict[str, Any]],
    ks: list[int],
    match: str,
    uses_passages: bool,
    normalization: str = "kilt",
) -> dict[str, float]:
    records = []
    for ex, row in zip(task.examples, rows):
        retrieved = row["passages"] if uses_passages else None
        records.append(
            score_example(
                task.spec.kind, row["answer"], ex.answers, retrieved, ex.provenance, ks, match, normalization
            )
        )
    return aggregate(records)


def run_eval(cfg: EvalConfig, model: Any = None) -> dict[str, Any]:
    """Run `cfg.method` over every task file; write predictions, metrics.json and table.md; return the
    metrics document. `model`: an already loaded ImpRAG (else loaded from cfg.model)."""
    t0 = time.time()
    tasks = plan_tasks(cfg)  # bad task files fail before the model loads
    if model is None:
        from imprag.model.imprag import ImpRAG
        from imprag.model.passage_cache import PassageKVCache

        model = ImpRAG.from_pretrained(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
        # an independent reader then runs a passage that several questions read through the model once
        model.passage_cache = PassageKVCache()
    model.decode_precision = cfg.precision
    k = cfg.k or model.config.k
    mc = model.config  # the answer budget must fit beside the prompt (and the passage offset)
    reads = cfg.method in ("imprag", "oracle")
    prompt_budget(
        mc.k, mc.l_max, context_window(model.lm.config), cfg.max_new_tokens, reads, "--max-new-tokens"
    )
    if reads:
        model.config.check_reads(k)
    index = None
    if cfg.index is not None and cfg.method == "imprag":
        from imprag.index.faiss_index import Index

        index = Index.load(
            cfg.index, model=model, allow_mismatch=cfg.allow_fingerprint_mismatch, passages=cfg.passages
        )
    passages = cfg.passages
    if passages is None and cfg.index is not None and cfg.method in ("rag-bm25", "rag-dense", "oracle"):
        passages = _index_passages(cfg.index)
    if cfg.method == "imprag" and index is not None:
        passages = Path(index.store.passages_path)
    if cfg.method == "closed-book":
        passages = None  # reads nothing: neither part of the settings nor of the report
    settings = run_settings(cfg, model, k, index, passages)
    _check_run_file(cfg.out, settings)
    method = make_method(
        cfg.method,
        model,
        k,
        index=index,
        passages=passages,
        cache_dir=cfg.cache_dir,
        on_error=cfg.on_error,
        query_calibration=cfg.query_calibration,
        fever=cfg.fever,
    )
    if not (cfg.out / RUN_FILE).exists():
        atomic_write_json(cfg.out / RUN_FILE, {"settings": settings})
    ks = recall_ks(k)
    results: dict[str, Any] = {}
    single = len(tasks) == 1
    for task in tasks:
        rows, reused = run_task(method, task, cfg.out, cfg.batch_size, cfg.max_new_tokens, cfg.show_progress)
        if reused:
            log.info(
                "%s: reused %d finished batches from %s", task.name, reused, cfg.out / BATCH_DIR / task.name
            )
        pred_path = cfg.out / PREDICTIONS_FILE if single else cfg.out / task.name / PREDICTIONS_FILE
        write_predictions(
            pred_path,
            (
                {"id": r["id"], "input": ex.input, "answer": r["answer"], "provenance": r["passages"] or []}
                for ex, r in zip(task.examples, rows)
            ),
            task=task.spec,
        )
        metrics = score_rows(task, rows, ks, cfg.match, method.uses_passages, cfg.normalization)
        results[task.name] = {
            "task": task.spec.name,
            "group": task.spec.group,
            "file": str(task.file),
            "predictions": str(pred_path.relative_to(cfg.out)),
            "n": len(rows),
            "finished_by_length": sum(1 for r in rows if r.get("finish_reason") == "length"),
            "no_passages": sum(1 for r in rows if method.uses_passages and not r["passages"]),
            "metrics": metrics,
        }
        verification = method.verification(task.spec)
        if verification is not None:
            results[task.name]["fever"] = verification
    doc = {
        "method": cfg.method,
        "model": str(cfg.model),
        "index": None if cfg.index is None else str(cfg.index),
        "passages": None if passages is None else str(passages),
        "k": k,
        "ks": ks,
        "limit": cfg.limit,
        "batch_size": cfg.batch_size,
        "max_new_tokens": cfg.max_new_tokens,
        "decoding": decoding(cfg),
        "match": cfg.match,
        "normalization": cfg.normalization,
        "model_config": settings["model_config"],
        "seconds": round(time.time() - t0, 2),
        "tasks": results,
    }
    atomic_write_json(cfg.out / METRICS_FILE, doc)
    atomic_write_text(cfg.out / TABLE_FILE, format_run_table(doc))
    return doc


def decoding(cfg: EvalConfig) -> str:
    """How answers are read off the model, as metrics.json and table.md state it."""
    return f"{DECODING}; {FEVER_DECISION[cfg.fever]}"


def _index_passages(index_dir: Path) -> Path:
    """The passages file an index was built from (as recorded in its metadata)."""
    from imprag.index.faiss_index import Index

    meta = read_json(index_dir / "metadata.json")
    return Path(Index._passages_path(index_dir, meta, None))


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * float(v):.1f}"


def format_run_table(doc: dict[str, Any]) -> str:
    """One run's metrics as markdown: a row per task, numbers in percent."""
    ks = doc["ks"]
    has_ret = any(any(key.startswith("answer_recall") for key in t["metrics"]) for t in doc["tasks"].values())
    cols = ["task", "n", "EM", "F1 / acc"]
    if has_ret:
        cols += [f"ans R@{k}" for k in ks] + ["R-prec"] + [f"prov R@{k}" for k in ks]
    lines = [
        f"# imprag eval: {doc['method']}",
        "",
        f"model `{doc['model']}`"
        + (f", index `{doc['index']}`" if doc.get("index") else "")
        + (f", passages `{doc['passages']}`" if doc.get("passages") else ""),
        f"k = {doc['k']}, limit = {doc['limit'] or 'all'}, max new tokens = {doc['max_new_tokens']}; {doc['decoding']}.",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(cols))) + "|",
    ]
    for name, t in doc["tasks"].items():
        m = t["metrics"]
        cells = [name, str(t["n"]), _pct(m.get("em")), _pct(m.get("accuracy", m.get("f1")))]
        if has_ret:
            cells += [_pct(m.get(f"answer_recall@{k}")) for k in ks]
            cells += [_pct(m.get("r_precision"))]
            cells += [_pct(m.get(f"provenance_recall@{k}")) for k in ks]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"{NORMALIZATION_NOTE[doc.get('normalization', 'kilt')]}; FEVER: label accuracy.",
        f"{MATCH_NOTE[doc['match']]}. AIDA: the gold page title equals a passage title; FEVER: a passage's "
        "title is a gold provenance page.",
        "R-prec / prov R@k: KILT R-precision and recall@k of the passages used against gold provenance "
        "(passage_id, else page title).",
    ]
    if doc["method"] == "oracle":
        lines.append(
            "oracle: the passages used are the gold ones, so the retrieval columns measure the gold data."
        )
    return "\n".join(lines) + "\n"
