"""The evaluated methods, all reading with the same language model so the comparison is fair.

    imprag       the model's implicit query retrieves top-k from an ImpRAG index; the middle layers read them
    closed-book  no passages: the plain model
    rag-bm25     RA-IT baseline: BM25 queried with the whole prompt, top-k passages prepended in the
                 context ("{passages}\\n\\n{prompt}"), read by the full plain model (no middle-layer reader)
    rag-dense    the same with all-MiniLM-L6-v2
    oracle       the gold provenance passages (by passage_id, else page title) read through ImpRAG's
                 middle layers: an upper bound for the reader

Each method maps a batch of Examples to MethodOutputs (the answer and the passages it used, best first).
Decoding is greedy; the answer is the generation's first line with text: blank lines before it are
skipped (an untrained model often starts with a newline after "A:"), the next newline ends it and the
batch stops once every row has one. Answers are stripped. FEVER (`imprag.eval.verify`): a claim is True
when its likelihood given the method's evidence is above the method's threshold, fitted on true/false
statements built from the corpus; closed-book, or `fever="label"`: the label (True/False) whose first
token the model scores higher.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from imprag.data.example import Example
from imprag.data.tasks import TaskSpec
from imprag.errors import UserError
from imprag.eval.metrics import fever_label
from imprag.eval.verify import Threshold, claim_parts, fit_threshold, sample_ids, statements
from imprag.passage import passage_text, read_passage_lines

log = logging.getLogger(__name__)

METHODS = ("imprag", "closed-book", "rag-bm25", "rag-dense", "oracle")
PASSAGE_FIELDS = ("id", "title", "text", "score")  # what a prediction keeps of each passage used


@dataclass
class MethodOutput:
    answer: str  # the model's answer, stripped (FEVER: "True"/"False" when the text names a label)
    text: str  # the raw generation
    finish_reason: str | None
    passages: (
        list[dict[str, Any]] | None
    )  # passages used, best first ({"id","title","text","score"?}); None = none


def answer_line(text: str) -> str:
    """The first line with text, stripped (leading blank lines skipped)."""
    return text.lstrip().split("\n", 1)[0].strip()


def _answered(g: Any) -> bool:
    return g.finish_reason is not None or "\n" in g.text.lstrip()


def decode_lines(stream: Iterable[list[Any]]) -> list[Any]:
    """Run a generate stream until every row has finished or has a newline after some text; the last
    state."""
    final: list[Any] = []
    for final in stream:  # noqa: B007 (keep the last state)
        if all(_answered(g) for g in final):
            break
    return final


def postprocess(spec: TaskSpec, text: str) -> str:
    """The answer line; FEVER: any recognised label word becomes the model-side answer True/False."""
    answer = answer_line(text)
    if spec.kind == "fever":
        label = fever_label(answer)
        if label is not None:
            return spec.to_model_answer(label)
    return answer


def decode_options(model: Any, spec: TaskSpec, max_new_tokens: int) -> dict[str, Any]:
    """generate_stream's arguments for a task. FEVER's answer is one of two labels: the label whose first
    token the model scores higher after the prompt (one decoding step), so that a reader that answers
    with a name instead is still asked to choose. Free text otherwise."""
    if spec.kind != "fever":
        return {"max_new_tokens": max_new_tokens}
    # as training joins them: a space after the prompt's final ":" (imprag.train.collate)
    words = [" " + spec.to_model_answer(label) for label in ("SUPPORTS", "REFUTES")]
    first = [model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if first[0] == first[1]:  # a tokenizer that cannot tell them apart by one token: generate
        return {"max_new_tokens": max_new_tokens}
    return {"max_new_tokens": 1, "choices": first}


def slim(p: Mapping[str, Any]) -> dict[str, Any]:
    """A passage record reduced to what predictions and metrics need."""
    out = {f: p[f] for f in PASSAGE_FIELDS if f in p and p[f] is not None}
    if "id" in out:
        out["id"] = str(out["id"])
    return out


def ra_it_prompt(passages: Sequence[Mapping[str, Any]], prompt: str) -> str:
    """RA-IT context: the passages ("Title: text", one per line) then a blank line then the prompt."""
    if not passages:
        return prompt
    return "\n".join(passage_text(p) for p in passages) + "\n\n" + prompt


def _outputs(
    spec: TaskSpec, gens: list[Any], passages: list[list[dict[str, Any]]] | None
) -> list[MethodOutput]:
    return [
        MethodOutput(
            answer=postprocess(spec, g.text),
            text=g.text,
            finish_reason="stop" if "\n" in g.text.lstrip() else g.finish_reason,
            passages=None if passages is None else [slim(p) for p in passages[i]],
        )
        for i, g in enumerate(gens)
    ]


class PassageLookup:
    """Passage records of a JSONL file by id and by page title, read on demand by byte offset (the
    corpus text is not held in memory; one scan builds the id and title tables)."""

    def __init__(self, path: str | Path, on_error: str = "fail"):
        self.path = Path(path)
        self._offsets: dict[str, tuple[int, int]] = {}  # id -> (byte offset, length) of its line
        self._by_title: dict[str, list[str]] = {}
        for p in read_passage_lines(self.path, on_error):
            self._offsets[p.id] = (p.start, p.end - p.start)
            title = _title_key(p.record.get("title"))
            if title:
                self._by_title.setdefault(title, []).append(p.id)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self) -> int:
        return len(self._offsets)

    def ids(self) -> list[str]:
        return list(self._offsets)

    def __contains__(self, pid: object) -> bool:
        return str(pid) in self._offsets

    def get(self, pid: str) -> dict[str, Any]:
        start, size = self._offsets[str(pid)]
        return json.loads(os.pread(self._fd, size, start).decode("utf-8"))

    def ids_for_title(self, title: str | None) -> list[str]:
        return list(self._by_title.get(_title_key(title), []))

    def close(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None  # type: ignore[assignment]

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _title_key(title: Any) -> str:
    return " ".join(str(title).split()).lower() if title else ""


# ---- the methods -----------------------------------------------------------------------------------


class Method:
    """What every method shares: find evidence for a batch of prompts, then read it with the model and
    answer. `in_context`: the evidence is prepended to the prompt's text (RA-IT) rather than read by
    ImpRAG's middle layers. FEVER with `fever="likelihood"` judges each claim by its likelihood given the
    evidence (`imprag.eval.verify`) against a threshold fitted by `prepare`."""

    name: str
    uses_passages = True
    in_context = False
    model: Any
    fever = "likelihood"
    lookup: PassageLookup | None = None  # the corpus the calibration statements are built from
    threshold: Threshold | None = None  # FEVER's, fitted by `prepare`

    def evidence(self, examples: list[Example], prompts: list[str]) -> list[list[dict[str, Any]]] | None:
        raise NotImplementedError

    def corpus(self) -> PassageLookup | None:
        return self.lookup

    def prepare(self, examples: list[Example], spec: TaskSpec) -> None:
        """Before a task's batches: FEVER judged by likelihood fits this method's threshold."""
        self.threshold = self._fit_threshold(spec) if self._judges(spec) else None

    def verification(self, spec: TaskSpec) -> dict[str, Any] | None:
        """How FEVER was decided, for the metrics (None for other tasks)."""
        if spec.kind != "fever":
            return None
        if self.threshold is None:
            return {"decision": "label"}
        return {"decision": "likelihood", **self.threshold.as_dict()}

    def run(self, examples: list[Example], spec: TaskSpec, max_new_tokens: int) -> list[MethodOutput]:
        prompts = [e.prompt for e in examples]
        hits = self.evidence(examples, prompts)
        if self._judges(spec) and self.threshold is not None:
            return self._judge(examples, spec, hits)
        opts = decode_options(self.model, spec, max_new_tokens)
        gens = decode_lines(self.model.generate_stream(*self._read(prompts, hits), **opts))
        return _outputs(spec, gens, hits)

    def _judges(self, spec: TaskSpec) -> bool:
        return spec.kind == "fever" and self.fever == "likelihood" and self.uses_passages

    def _read(self, prompts: list[str], hits: list[list[dict[str, Any]]] | None):
        """generate_stream's (prompts, passages) for these prompts and their evidence."""
        if hits is None:
            return prompts, None
        if self.in_context:
            return [ra_it_prompt(h, p) for h, p in zip(hits, prompts)], None
        return prompts, [[passage_text(p) for p in h] for h in hits]

    def _claim_scores(self, examples: list[Example], spec: TaskSpec, hits) -> torch.Tensor:
        heads, claims = zip(*(claim_parts(spec, e) for e in examples))
        prompts, passages = self._read(list(heads), hits)
        return self.model.continuation_logprob(prompts, list(claims), passages)

    def _fit_threshold(self, spec: TaskSpec, batch_size: int = 8) -> Threshold | None:
        corpus = self.corpus()
        if corpus is None:
            return None
        rows = statements([corpus.get(i) for i in sample_ids(corpus.ids())], spec)
        scores = []
        for s in range(0, len(rows), batch_size):
            batch = rows[s : s + batch_size]
            hits = self.evidence(batch, [e.prompt for e in batch])
            scores.append(self._claim_scores(batch, spec, hits))
        truth = torch.tensor([e.answers[0] == spec.to_model_answer("SUPPORTS") for e in rows])
        found = fit_threshold(torch.cat(scores) if scores else torch.zeros(0), truth)
        if found is None:
            log.warning(
                "%s: too few statements in the corpus to calibrate FEVER; ranking its labels", self.name
            )
        else:
            log.info(
                "%s: FEVER threshold %.2f nats (%.0f%% of %d corpus statements right)",
                self.name,
                found.value,
                100 * found.accuracy,
                found.statements,
            )
        return found

    def _judge(self, examples: list[Example], spec: TaskSpec, hits) -> list[MethodOutput]:
        t = self.threshold
        assert t is not None
        out = []
        for i, score in enumerate(self._claim_scores(examples, spec, hits).tolist()):
            true = score > t.value
            label = "SUPPORTS" if true else "REFUTES"
            text = f"claim log-likelihood {score:.2f} {'>' if true else '<='} threshold {t.value:.2f}"
            passages = None if hits is None else [slim(p) for p in hits[i]]
            out.append(MethodOutput(spec.to_model_answer(label), text, "stop", passages))
        return out


class ClosedBook(Method):
    """The plain model, no passages."""

    name = "closed-book"
    uses_passages = False

    def __init__(self, model: Any):
        self.model = model

    def evidence(self, examples, prompts):
        return None


class ImpRAGMethod(Method):
    """Implicit-query retrieval from an ImpRAG index + middle-layer reading (`imprag.rag.retrieve`)."""

    name = "imprag"

    def __init__(self, model: Any, index: Any, k: int, query_calibration: str = "prompts"):
        self.model, self.index, self.k = model, index, k
        self.query_calibration = query_calibration
        cal = getattr(model, "calibration", None)
        self._stored = None if cal is None else dict(cal.query)  # the means the model came with

    def prepare(self, examples: list[Example], spec: TaskSpec) -> None:
        """With query_calibration "prompts", each prompt format's query mean is taken from the task's own
        prompts (label-free); "stored" keeps the model's means."""
        if self._stored is not None:
            self.model.calibration.query = dict(self._stored)
            if self.query_calibration == "prompts":
                self.model.calibrate_queries([e.prompt for e in examples])
        super().prepare(examples, spec)

    def corpus(self) -> PassageLookup:
        if self.lookup is None:  # read only when FEVER is calibrated
            # the index build reported (or refused) its bad lines already
            self.lookup = PassageLookup(self.index.store.passages_path, on_error="skip")
        return self.lookup

    def evidence(self, examples, prompts):
        from imprag.rag import retrieve

        return retrieve(self.model, self.index, prompts, self.k)


class RetrieverRAG(Method):
    """RA-IT: a separate retriever queried with the whole prompt; top-k passages prepended in the context
    and read by the full plain model (`generate_stream(..., passages=None)` on the concatenated prompt)."""

    in_context = True
    lookup: PassageLookup

    def __init__(self, model: Any, retriever: Any, lookup: PassageLookup, k: int):
        self.model, self.retriever, self.lookup, self.k = model, retriever, lookup, k
        self.name = f"rag-{retriever.name}"

    def evidence(self, examples, prompts):
        ids, scores = self.retriever.search(prompts, self.k)  # (B, k) ids and scores
        hits: list[list[dict[str, Any]]] = []
        for row_ids, row_scores in zip(ids, scores):
            recs = []
            for pid, s in zip(row_ids, row_scores):
                rec = dict(self.lookup.get(pid))
                rec["score"] = float(s)
                recs.append(rec)
            hits.append(recs)
        return hits


class Oracle(Method):
    """The gold provenance passages, read through ImpRAG's middle layers: an upper bound for the reader.

    Each provenance entry gives its `passage_id` when that id is in the corpus, else the first passage
    of its page title not taken yet; at most k per example. Examples whose provenance names nothing in
    the corpus are read with no passages (counted in `missing`).
    """

    name = "oracle"
    lookup: PassageLookup

    def __init__(self, model: Any, lookup: PassageLookup, k: int):
        self.model, self.lookup, self.k = model, lookup, k
        self.missing = 0

    def gold_passages(self, example: Example) -> list[dict[str, Any]]:
        chosen: list[str] = []
        for p in example.provenance:
            if len(chosen) >= self.k:
                break
            if p.passage_id is not None and p.passage_id in self.lookup:
                pid: str | None = p.passage_id
            else:
                pid = next((x for x in self.lookup.ids_for_title(p.title) if x not in chosen), None)
            if pid is not None and pid not in chosen:
                chosen.append(pid)
        return [self.lookup.get(pid) for pid in chosen]

    def evidence(self, examples, prompts):
        gold = [self.gold_passages(e) for e in examples]
        self.missing += sum(1 for g in gold if not g)
        return gold


def make_method(
    name: str,
    model: Any,
    k: int,
    index: Any = None,
    passages: str | Path | None = None,
    cache_dir: str | Path | None = None,
    on_error: str = "fail",
    query_calibration: str = "prompts",
    fever: str = "likelihood",
) -> Method:
    """Build a method by name; `index` is needed by imprag, `passages` by rag-* and oracle; `fever`: how
    FEVER claims are decided (`imprag.eval.verify`)."""
    method = _make_method(name, model, k, index, passages, cache_dir, on_error, query_calibration)
    method.fever = fever
    return method


def _make_method(name, model, k, index, passages, cache_dir, on_error, query_calibration) -> Method:
    if name not in METHODS:
        raise UserError(f"--method {name!r}: choose one of {', '.join(METHODS)}")
    if name == "closed-book":
        return ClosedBook(model)
    if name == "imprag":
        if index is None:
            raise UserError(
                "--method imprag needs --index (an index built by this model with `imprag index`)"
            )
        return ImpRAGMethod(model, index, k, query_calibration)
    if passages is None:
        raise UserError(
            f"--method {name} needs --passages (the passages JSONL), or an --index whose metadata names it"
        )
    lookup = PassageLookup(passages, on_error=on_error)
    if name == "oracle":
        return Oracle(model, lookup, k)
    from imprag.retrievers import load_retriever

    retriever = load_retriever(name.removeprefix("rag-"), passages, cache_dir=cache_dir, on_error=on_error)
    return RetrieverRAG(model, retriever, lookup, k)
