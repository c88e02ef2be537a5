"""`imprag eval` end to end on a tiny random model: every method, every registry task, resume, and the
metrics checked against independent paths (the model's own generate, the retrievers, `imprag score`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import build_index

from imprag.cli import main
from imprag.data.kilt import load_examples
from imprag.data.tasks import EVAL_TASKS, get_task
from imprag.eval.methods import answer_line, postprocess, ra_it_prompt
from imprag.eval.runner import recall_ks
from imprag.eval.scoring import score_files

K = 3
MAX_NEW = 6
BATCH = 2

# A small world: each entity has one passage; NQ-style questions point at theirs by passage_id.
FACTS = [
    (
        "Aldor",
        "Aldor is a river town. The capital of Aldor is Brightwater, founded by the author Mira Quell.",
    ),
    ("Brightwater", "Brightwater is a city on the river Sena. Its mayor is Tom Ardent."),
    ("Mira Quell", "Mira Quell wrote the book The Silent King in 1901."),
    ("The Silent King", "The Silent King is a novel about a king and a queen at war, by Mira Quell."),
    ("Sena", "The Sena is a river that flows north through the valley of Orun."),
    ("Orun", "Orun is a valley in the mountains. The song of Orun is sung by Lina Vale."),
    ("Lina Vale", "Lina Vale is a singer born in Brightwater in 1950."),
    ("Tom Ardent", "Tom Ardent is a politician, mayor of Brightwater since 1999."),
]
FILLER = [
    (f"Filler {i}", f"Filler page {i} talks about weather, fields and roads number {i}.") for i in range(12)
]
QA = [
    ("what is the capital of aldor", ["Brightwater"], "p0"),
    ("who wrote the silent king", ["Mira Quell"], "p2"),
    ("which river flows north through orun", ["Sena", "the Sena"], "p4"),
    ("who sings the song of orun", ["Lina Vale"], "p5"),
    ("who is the mayor of brightwater", ["Tom Ardent"], "p1"),
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_passages(path: Path) -> Path:
    return _jsonl(path, [{"id": f"p{i}", "title": t, "text": x} for i, (t, x) in enumerate(FACTS + FILLER)])


def _qa_rows(prefix: str) -> list[dict]:
    return [
        {
            "id": f"{prefix}-{i}",
            "input": q,
            "output": [
                *({"answer": a} for a in ans),
                {"provenance": [{"passage_id": pid, "title": FACTS[int(pid[1:])][0]}]},
            ],
        }
        for i, (q, ans, pid) in enumerate(QA)
    ]


def write_tasks(d: Path) -> dict[str, Path]:
    """One small KILT file per registry eval task, named so the task is guessed from the file name."""
    d.mkdir(parents=True, exist_ok=True)
    files = {
        "nq": _jsonl(d / "nq-dev-kilt.jsonl", _qa_rows("nq")),
        "hotpotqa": _jsonl(d / "hotpotqa-dev-kilt.jsonl", _qa_rows("hp")[:3]),
        "simpleqa": _jsonl(d / "simpleqa-dev.jsonl", _qa_rows("sq")[:3]),
        "2wikimultihopqa": _jsonl(d / "2wikimultihopqa-dev.jsonl", _qa_rows("2w")[:3]),
    }
    slot = [
        {
            "id": "s0",
            "input": "Mira Quell [SEP] notable work",
            "output": [{"answer": "The Silent King"}, {"provenance": [{"title": "Mira Quell"}]}],
        },
        {
            "id": "s1",
            "input": "Lina Vale [SEP] place of birth",
            "output": [{"answer": "Brightwater"}, {"provenance": [{"title": "Lina Vale"}]}],
        },
        {
            "id": "s2",
            "input": "Sena [SEP] flows through",
            "output": [{"answer": "Orun"}, {"provenance": [{"title": "Sena"}]}],
        },
    ]
    files["trex"] = _jsonl(d / "trex-dev-kilt.jsonl", slot)
    files["zsre"] = _jsonl(
        d / "structured_zeroshot-dev-kilt.jsonl", [dict(r, id="z" + r["id"]) for r in slot]
    )
    files["fever"] = _jsonl(
        d / "fever-dev-kilt.jsonl",
        [
            {
                "id": "f0",
                "input": "Mira Quell wrote The Silent King.",
                "output": [
                    {"answer": "SUPPORTS", "provenance": [{"wikipedia_id": "3", "title": "Mira Quell"}]}
                ],
            },
            {
                "id": "f1",
                "input": "The Sena flows south.",
                "output": [{"answer": "REFUTES", "provenance": [{"wikipedia_id": "5", "title": "Sena"}]}],
            },
            {
                "id": "f2",
                "input": "Tom Ardent is a singer.",
                "output": [
                    {"answer": "REFUTES", "provenance": [{"wikipedia_id": "8", "title": "Tom Ardent"}]}
                ],
            },
        ],
    )
    files["aida"] = _jsonl(
        d / "aidayago2-dev-kilt.jsonl",
        [
            {
                "id": "a0",
                "input": "The mayor of [START_ENT] Brightwater [END_ENT] spoke on the radio today.",
                "output": [{"answer": "Brightwater", "provenance": [{"title": "Brightwater"}]}],
            },
            {
                "id": "a1",
                "input": "A new novel by [START_ENT] Quell [END_ENT] was praised.",
                "output": [{"answer": "Mira Quell", "provenance": [{"title": "Mira Quell"}]}],
            },
        ],
    )
    return files


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_dir) -> dict:
    root = tmp_path_factory.mktemp("eval")
    passages = write_passages(root / "passages.jsonl")
    tasks = write_tasks(root / "tasks")
    index = root / "index"
    build_index(tiny_model_dir, passages, index)
    return {
        "root": root,
        "passages": passages,
        "tasks": tasks,
        "index": index,
        "cache": root / "cache",
        "model": tiny_model_dir,
    }


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from imprag.model.imprag import ImpRAG

    return ImpRAG.from_pretrained(tiny_model_dir)


def eval_args(world: dict, method: str, out: Path, data: str = "nq", *extra: str) -> list[str]:
    files = ",".join(str(world["tasks"][t]) for t in data.split(","))
    return [
        "eval", "--model", str(world["model"]), "--index", str(world["index"]), "--data", files,
        "--method", method, "--out", str(out), "-k", str(K), "--batch-size", str(BATCH),
        "--max-new-tokens", str(MAX_NEW), "--cache-dir", str(world["cache"]), "--quiet", *extra,
    ]  # fmt: skip


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def batched_generate(model, prompts: list[str], passages=None) -> list[str]:
    """The model's own generate (no stop: the whole MAX_NEW tokens), in the same batches as the runner
    (left padding depends on the batch), cut to the answer line."""
    out = []
    for s in range(0, len(prompts), BATCH):
        ps = None if passages is None else passages[s : s + BATCH]
        out += [
            answer_line(g.text) for g in model.generate(prompts[s : s + BATCH], ps, max_new_tokens=MAX_NEW)
        ]
    return out


def check_outputs(world: dict, out: Path, method: str) -> tuple[list[dict], dict]:
    """The three files exist, predictions are KILT lines in gold order, metrics match `imprag score`."""
    gold = world["tasks"]["nq"]
    preds = read_jsonl(out / "predictions.jsonl")
    examples = load_examples(gold, "nq")
    assert [p["id"] for p in preds] == [e.id for e in examples]
    assert all(set(p["output"][0]) == {"answer", "provenance"} for p in preds)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["method"] == method and doc["k"] == K and doc["ks"] == [1, K] and doc["match"] == "word"
    assert doc["normalization"] == "kilt"  # EM/F1 by the official rule unless --normalize unicode
    m = doc["tasks"]["nq"]["metrics"]
    assert m["n"] == len(QA)
    ref = score_files(out / "predictions.jsonl", gold, passages=world["passages"], ks=[1, K])["metrics"]
    # `imprag score` leaves out recall@k beyond the passages a prediction carries (oracle: one gold passage)
    used = max(len(p["output"][0]["provenance"]) for p in preds)
    for key in ("em", "f1", f"answer_recall@{K}", "r_precision", f"provenance_recall@{K}"):
        if key in ref or "@" not in key or used >= K:
            assert (key in m) == (key in ref) and m.get(key) == pytest.approx(ref.get(key)), key
    table = (out / "table.md").read_text()
    assert f"imprag eval: {method}" in table and "word boundaries" in table and "| nq | 5 |" in table
    assert "official KILT/SQuAD normalisation" in table
    return preds, doc


def test_closed_book_is_the_plain_models_answers(world, model, tmp_path):
    out = tmp_path / "cb"
    assert main(eval_args(world, "closed-book", out)) == 0
    preds, doc = check_outputs(world, out, "closed-book")
    examples = load_examples(world["tasks"]["nq"], "nq")
    want = batched_generate(model, [e.prompt for e in examples])
    assert [p["output"][0]["answer"] for p in preds] == want
    assert all(p["output"][0]["provenance"] == [] for p in preds)
    assert not any(k.startswith(("answer_recall", "r_precision")) for k in doc["tasks"]["nq"]["metrics"])


def test_imprag_reads_what_the_index_retrieves(world, model, tmp_path):
    from imprag.index.faiss_index import Index
    from imprag.passage import passage_text

    out = tmp_path / "imp"
    assert main(eval_args(world, "imprag", out)) == 0
    preds, doc = check_outputs(world, out, "imprag")
    examples = load_examples(world["tasks"]["nq"], "nq")
    prompts = [e.prompt for e in examples]
    hits = Index.load(world["index"], model=model).retrieve(model, prompts, k=K)
    assert [[q["passage_id"] for q in p["output"][0]["provenance"]] for p in preds] == [
        [h["id"] for h in hs] for hs in hits
    ]
    want = batched_generate(model, prompts, [[passage_text(h) for h in hs] for hs in hits])
    assert [p["output"][0]["answer"] for p in preds] == want
    m = doc["tasks"]["nq"]["metrics"]
    assert 0.0 <= m["answer_recall@1"] <= m[f"answer_recall@{K}"] <= 1.0


@pytest.mark.parametrize("name", ["bm25", "dense"])
def test_rag_baseline_prepends_the_retrievers_passages(world, model, tmp_path, name):
    from imprag.retrievers import load_retriever

    out = tmp_path / name
    assert main(eval_args(world, f"rag-{name}", out)) == 0
    preds, doc = check_outputs(world, out, f"rag-{name}")
    examples = load_examples(world["tasks"]["nq"], "nq")
    prompts = [e.prompt for e in examples]
    ids, _ = load_retriever(name, world["passages"], cache_dir=world["cache"]).search(prompts, K)
    assert [[q["passage_id"] for q in p["output"][0]["provenance"]] for p in preds] == ids
    recs = {r["id"]: r for r in read_jsonl(world["passages"])}
    contexts = [ra_it_prompt([recs[i] for i in row], p) for row, p in zip(ids, prompts)]
    assert contexts[0].startswith(recs[ids[0][0]]["title"] + ": ") and contexts[0].endswith(
        "\n\n" + prompts[0]
    )
    assert [p["output"][0]["answer"] for p in preds] == batched_generate(model, contexts)
    m = doc["tasks"]["nq"]["metrics"]
    if name == "bm25":  # the questions share words with their passages: BM25 finds them
        assert m[f"answer_recall@{K}"] == 1.0 and m[f"provenance_recall@{K}"] == 1.0


def test_oracle_reads_the_gold_passages(world, model, tmp_path):
    out = tmp_path / "oracle"
    # no --passages: the path comes from the index metadata
    assert main(eval_args(world, "oracle", out)) == 0
    preds, doc = check_outputs(world, out, "oracle")
    assert [[q["passage_id"] for q in p["output"][0]["provenance"]] for p in preds] == [
        [pid] for _, _, pid in QA
    ]
    m = doc["tasks"]["nq"]["metrics"]
    assert m["r_precision"] == 1.0 and m["answer_recall@1"] == 1.0


def test_every_registry_task_in_one_run(world, tmp_path):
    out = tmp_path / "all"
    assert main(eval_args(world, "oracle", out, ",".join(EVAL_TASKS))) == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert list(doc["tasks"]) == list(EVAL_TASKS)
    for task in EVAL_TASKS:
        t = doc["tasks"][task]
        assert (out / task / "predictions.jsonl").exists() and t["predictions"] == f"{task}/predictions.jsonl"
        assert t["no_passages"] == 0  # title-only provenance (slot, FEVER, AIDA) found by page title
        rows = read_jsonl(out / "batches" / task / "00000.jsonl")
        assert rows[0]["prompt"] == load_examples(world["tasks"][task], task)[0].prompt
    fever = doc["tasks"]["fever"]["metrics"]
    assert "accuracy" in fever and fever["em"] == fever["accuracy"] and "f1" not in fever
    assert doc["tasks"]["fever"]["metrics"]["answer_recall@1"] == 1.0  # the gold page is read
    judged = doc["tasks"]["fever"]["fever"]  # how its claims were decided, with the fitted threshold
    assert judged["decision"] == "likelihood" and judged["statements"] == 8
    assert "FEVER: True when the claim's log-likelihood" in doc["decoding"]
    assert all("fever" not in doc["tasks"][t] for t in EVAL_TASKS if t != "fever")
    assert doc["tasks"]["aida"]["metrics"]["answer_recall@1"] == 1.0
    fever_preds = read_jsonl(out / "fever" / "predictions.jsonl")
    assert all(
        p["output"][0]["provenance"][0]["title"] == t
        for p, t in zip(fever_preds, ["Mira Quell", "Sena", "Tom Ardent"])
    )
    aida_prompt = read_jsonl(out / "batches" / "aida" / "00000.jsonl")[0]["prompt"]
    assert "[START] Brightwater [END]" in aida_prompt and aida_prompt.endswith("in the given text A:")
    table = (out / "table.md").read_text()
    assert all(f"| {t} |" in table for t in EVAL_TASKS)


def test_fever_answers_map_to_true_false():
    fever = get_task("fever")
    assert postprocess(fever, " True, it is.") == "True"
    assert postprocess(fever, "no") == "False"
    assert postprocess(fever, "SUPPORTS") == "True"
    assert postprocess(fever, " maybe ") == "maybe"
    assert postprocess(get_task("nq"), "  Paris \n") == "Paris"
    assert (
        postprocess(get_task("nq"), "\n\n Paris France \nQ: next") == "Paris France"
    )  # leading blank lines skipped
    assert answer_line("\n \n") == ""


def test_fever_is_answered_by_the_label_whose_first_token_scores_higher(tiny_model_dir, tmp_path):
    import torch

    from imprag.data.example import Example
    from imprag.data.tasks import apply_template
    from imprag.eval.methods import ClosedBook, Oracle, PassageLookup
    from imprag.model.imprag import ImpRAG
    from imprag.passage import passage_text

    model = ImpRAG.from_pretrained(tiny_model_dir)
    fever = get_task("fever")
    claims = ["Mira Quell wrote The Silent King.", "The Sena flows south.", "Tom Ardent is a singer."]
    examples = [
        Example(f"c{i}", "fever", c, apply_template("fever", c), ["SUPPORTS"]) for i, c in enumerate(claims)
    ]
    lookup = PassageLookup(write_passages(tmp_path / "p.jsonl"))
    gold = [[lookup.get("p2")], [lookup.get("p4")], [lookup.get("p7")]]
    true_id, false_id = (
        model.tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" True", " False")
    )
    assert true_id != false_id
    oracle = Oracle(model, lookup, K)
    oracle.fever = "label"  # the paper's way (closed-book always answers so)
    oracle.gold_passages = lambda e: gold[int(e.id[1:])]  # type: ignore[method-assign]
    for method, read in ((ClosedBook(model), None), (oracle, gold)):
        method.prepare(examples, fever)
        assert method.verification(fever) == {"decision": "label"}
        outputs = method.run(examples, fever, MAX_NEW)
        for i, (ex, out) in enumerate(zip(examples, outputs)):
            ids, mask = model.encode_prompts([ex.prompt], with_passages=read is not None)
            passages = None if read is None else model.tokenize_passages([[passage_text(p) for p in read[i]]])
            with torch.no_grad():
                logits = model.forward(ids, mask, passages=passages).logits[0, -1]
            want = "True" if logits[true_id] > logits[false_id] else "False"
            assert out.answer == want and out.text.strip() == want


@pytest.mark.parametrize("name", ["oracle", "rag-bm25"])
def test_fever_claims_are_judged_by_their_likelihood_against_corpus_statements(world, model, name):
    """The threshold is fitted on statements built from the corpus, each read with the evidence the method
    finds for it; a claim is True when log p(claim | evidence, instruction) is above it."""
    from imprag.eval.methods import PassageLookup, make_method, ra_it_prompt
    from imprag.eval.verify import claim_parts, fit_threshold, sample_ids, statements
    from imprag.passage import passage_text

    fever = get_task("fever")
    method = make_method(name, model, K, passages=world["passages"], cache_dir=world["cache"])
    examples = load_examples(world["tasks"]["fever"], fever)

    def by_hand(rows: list) -> torch.Tensor:  # each row alone, as the method's evidence reads
        scores = []
        for e in rows:
            hits = method.evidence([e], [e.prompt])[0]
            head, claim = claim_parts(fever, e)
            if name == "oracle":
                scores.append(model.continuation_logprob([head], [claim], [[passage_text(p) for p in hits]]))
            else:
                scores.append(model.continuation_logprob([ra_it_prompt(hits, head)], [claim]))
        return torch.cat(scores)

    lookup = PassageLookup(world["passages"])
    rows = statements([lookup.get(i) for i in sample_ids(lookup.ids())], fever)
    want = fit_threshold(by_hand(rows), torch.tensor([r.answers == ["True"] for r in rows]))
    assert want is not None and len(rows) == 8
    method.prepare(examples, fever)
    assert method.threshold.value == pytest.approx(want.value, abs=1e-3)
    assert method.verification(fever) == {"decision": "likelihood", **method.threshold.as_dict()}
    outputs = method.run(examples, fever, MAX_NEW)
    for out, score in zip(outputs, by_hand(examples).tolist()):
        assert abs(score - want.value) > 1e-3  # not on the edge, so batching noise cannot flip it
        assert out.answer == ("True" if score > want.value else "False")
        assert out.text.startswith("claim log-likelihood ")
        assert float(out.text.split()[2]) == pytest.approx(score, abs=0.01)
    assert all(out.passages for out in outputs)


def test_resume_reuses_finished_batches(world, tmp_path):
    out = tmp_path / "resume"
    assert main(eval_args(world, "rag-bm25", out, "nq", "--limit", "3")) == 0  # batches 0 (2 ex), 1 (1 ex)
    b0, b1 = out / "batches" / "nq" / "00000.jsonl", out / "batches" / "nq" / "00001.jsonl"
    first = b0.stat().st_mtime_ns, b1.read_text()
    assert len(read_jsonl(out / "predictions.jsonl")) == 3
    assert main(eval_args(world, "rag-bm25", out)) == 0  # all 5: batch 0 reused, 1 redone (2 ex), 2 new
    assert b0.stat().st_mtime_ns == first[0]
    assert len(read_jsonl(b1)) == 2 and read_jsonl(b1)[0] == json.loads(first[1].splitlines()[0])
    full = (out / "predictions.jsonl").read_text()
    # an interrupted run leaves only whole batch files: drop the last one and the outputs, run again
    (out / "batches" / "nq" / "00002.jsonl").unlink()
    (out / "metrics.json").unlink()
    assert main(eval_args(world, "rag-bm25", out)) == 0
    assert (out / "predictions.jsonl").read_text() == full
    assert not list(out.rglob("*.tmp"))
    assert recall_ks(3) == [1, 3] and recall_ks(10) == [1, 5, 10] and recall_ks(20) == [1, 5, 10, 20]


def test_report_over_real_runs(world, tmp_path):
    runs = [tmp_path / "cb-nq", tmp_path / "cb-fever", tmp_path / "oracle"]
    assert main(eval_args(world, "closed-book", runs[0], "nq")) == 0
    assert main(eval_args(world, "closed-book", runs[1], "fever")) == 0  # merges into the closed-book row
    assert main(eval_args(world, "oracle", runs[2], "nq,fever")) == 0
    assert main(["report", *map(str, runs), "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | k | NQ | FEVER | Avg |")
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| closed-book", "| oracle"]
    cb = json.loads((runs[1] / "metrics.json").read_text())["tasks"]["fever"]["metrics"]
    assert rows[1].split(" | ")[3] == f"{100 * cb['em']:.1f}"  # closed-book: EM only
    oracle = json.loads((runs[2] / "metrics.json").read_text())["tasks"]["nq"]["metrics"]
    assert rows[2].split(" | ")[2] == f"{100 * oracle['em']:.1f} ({100 * oracle[f'answer_recall@{K}']:.1f})"
    assert (tmp_path / "rep" / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
