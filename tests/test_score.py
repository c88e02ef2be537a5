"""`imprag score`: round trips of the official KILT samples and the real NQ/HotpotQA files, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imprag.cli import main
from imprag.data.kilt import load_examples, write_predictions
from imprag.data.tasks import task_for_file

SAMPLES = ("nq", "hotpotqa", "triviaqa", "trex", "structured_zeroshot", "fever", "aidayago2")


def _gold_files(shared_data: Path) -> list[Path]:
    files = []
    for prefix in SAMPLES:
        found = [
            f
            for f in sorted((shared_data / "kilt_samples").glob(f"{prefix}-*-kilt.jsonl"))
            if "without" not in f.name
        ]
        assert len(found) == 2, found  # dev + train
        files += found
    return files


def _gold_rows(examples, with_provenance: bool = True):
    rows = []
    for e in examples:
        prov = [
            {"passage_id": p.passage_id, "wikipedia_id": p.wikipedia_id, "title": p.title}
            for p in e.provenance
        ]
        rows.append(
            {
                "id": e.id,
                "input": e.input,
                "answer": e.answers[0],
                "provenance": prov if with_provenance else [],
            }
        )
    return rows


def test_round_trip_every_kilt_sample(shared_data, tmp_path, capsys):
    for gold in _gold_files(shared_data):
        task = task_for_file(gold)
        examples = load_examples(gold, task, require_answers=True)
        assert all(e.prompt for e in examples)
        pred = tmp_path / f"{gold.stem}.pred.jsonl"
        write_predictions(pred, _gold_rows(examples), task=task)
        out = tmp_path / f"{gold.stem}.metrics.json"
        assert main(["score", "--predictions", str(pred), "--gold", str(gold), "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        m = result["metrics"]
        assert result["task"] == task and result["n_predicted"] == result["n_gold"] == len(examples) == m["n"]
        assert m["em"] == 1.0, gold.name
        if task == "fever":
            assert m["accuracy"] == 1.0 and json.loads(pred.read_text().splitlines()[0])["output"][0][
                "answer"
            ] in (
                "SUPPORTS",
                "REFUTES",
            )
        else:
            assert m["f1"] == 1.0
        if any(e.provenance for e in examples):  # gold provenance returned as the ranking: perfect retrieval
            assert m["r_precision"] == 1.0, gold.name
        table = capsys.readouterr().out
        assert f"task {task}:" in table and "em" in table


def test_fever_model_answers_score_against_kilt_labels(shared_data, tmp_path):
    gold = shared_data / "kilt_samples" / "fever-dev-kilt.jsonl"
    examples = load_examples(gold, "fever")
    flipped = [{"id": e.id, "answer": {"True": "False", "False": "True"}[e.answers[0]]} for e in examples]
    pred = tmp_path / "p.jsonl"
    write_predictions(pred, flipped)  # True/False as the model says them, no mapping back
    out = tmp_path / "m.json"
    assert (
        main(["score", "--predictions", str(pred), "--gold", str(gold), "--out", str(out), "--task", "fever"])
        == 0
    )
    assert json.loads(out.read_text())["metrics"]["em"] == 0.0


def test_nq_dev_with_passages_gives_answer_and_passage_recall(shared_data, tmp_path, capsys):
    gold = shared_data / "nq" / "dev.jsonl"
    examples = load_examples(gold, "nq")
    # rank a wrong passage first, the gold passage second; answer the first half right
    rows = []
    for i, e in enumerate(examples):
        wrong = examples[(i + 1) % len(examples)].provenance[0]
        rows.append(
            {
                "id": e.id,
                "answer": e.answers[0] if i < 250 else "no idea",
                "provenance": [{"passage_id": wrong.passage_id}, {"passage_id": e.provenance[0].passage_id}],
            }
        )
    pred = tmp_path / "nq.pred.jsonl"
    write_predictions(pred, rows)
    args = [
        "score",
        "--predictions",
        str(pred),
        "--gold",
        str(gold),
        "--passages",
        str(shared_data / "wiki" / "passages.jsonl"),
    ]
    assert main([*args, "--json", "--k", "1,2,5"]) == 0
    m = json.loads(capsys.readouterr().out)["metrics"]
    assert m["em"] == 0.5
    assert m["r_precision"] == 0.0 and m["provenance_recall@1"] == 0.0 and m["provenance_recall@2"] == 1.0
    assert "provenance_recall@5" not in m  # only 2 passages per prediction
    assert m["answer_recall@2"] >= 0.95  # the gold passage holds the answer (answer strings vary in form)
    assert m["answer_recall@1"] < 0.2


def test_partial_predictions_are_scored_with_coverage(shared_data, tmp_path):
    gold = shared_data / "hotpotqa" / "dev.jsonl"
    examples = load_examples(gold, "hotpotqa")[:10]
    pred = tmp_path / "hp.jsonl"
    write_predictions(pred, _gold_rows(examples, with_provenance=False))
    out = tmp_path / "m.json"
    assert main(["score", "--predictions", str(pred), "--gold", str(gold), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["n_predicted"], result["n_gold"], result["metrics"]["em"]) == (10, 100, 1.0)
    assert "r_precision" not in result["metrics"]  # no provenance in the predictions


def _nq_gold(tmp_path: Path) -> Path:
    gold = tmp_path / "nq-dev-kilt.jsonl"
    lines = [
        {"id": "a", "input": "q1", "output": [{"answer": "Paris"}]},
        {"id": "b", "input": "q2", "output": [{"answer": "Rome"}]},
    ]
    gold.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return gold


def test_unknown_prediction_id_is_one_clear_error(tmp_path, capsys):
    gold = _nq_gold(tmp_path)
    pred = tmp_path / "pred.jsonl"
    write_predictions(
        pred, [{"id": "a", "answer": "Paris"}, {"id": "zzz", "answer": "x"}, {"id": "yyy", "answer": "y"}]
    )
    assert main(["score", "--predictions", str(pred), "--gold", str(gold)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"{pred}:2: prediction id 'zzz' is not in the gold file" in err[0]


@pytest.mark.parametrize(
    "lines,message",
    [
        (
            ['{"id": "a", "output": [{"answer": "Paris"}]}', '{"output": []}'],
            "pred.jsonl:2: prediction has no `id`",
        ),
        (['{"id": "a", "output": [{"answer": "Paris"}]}', "{oops"], "pred.jsonl:2: not valid JSON"),
        (['{"id": "a", "output": "Paris"}'], "pred.jsonl:1: `output` must be a list"),
        (
            ['{"id": "a", "output": [{"answer": "P"}]}', '{"id": "a", "output": [{"answer": "P"}]}'],
            "duplicate prediction id 'a'",
        ),
        (['{"id": "a", "output": [{"answer": ["P"]}]}'], "the answer must be a string"),
        ([""], "no predictions in the file"),
    ],
)
def test_bad_prediction_files_exit_2(tmp_path, capsys, lines, message):
    gold = _nq_gold(tmp_path)
    pred = tmp_path / "pred.jsonl"
    pred.write_text("\n".join(lines) + "\n")
    assert main(["score", "--predictions", str(pred), "--gold", str(gold)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_gold_without_answers_is_refused(shared_data, tmp_path, capsys):
    gold = shared_data / "kilt_samples" / "nq-test_without_answers-kilt.jsonl"
    pred = tmp_path / "pred.jsonl"
    write_predictions(pred, [{"id": "-4203908294749842710", "answer": "x"}])
    assert main(["score", "--predictions", str(pred), "--gold", str(gold)]) == 2
    assert f"{gold}:1: example -4203908294749842710 has no gold answers" in capsys.readouterr().err


def test_task_guessing_and_flag_errors(tmp_path, capsys):
    gold = tmp_path / "mystery.jsonl"
    gold.write_text(json.dumps({"id": "a", "input": "q", "output": [{"answer": "x"}]}) + "\n")
    pred = tmp_path / "p.jsonl"
    write_predictions(pred, [{"id": "a", "answer": "x"}])
    assert main(["score", "--predictions", str(pred), "--gold", str(gold)]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["score", "--predictions", str(pred), "--gold", str(gold), "--task", "squad"]) == 2
    assert "unknown task 'squad'" in capsys.readouterr().err
    assert main(["score", "--predictions", str(pred), "--gold", str(gold), "--task", "nq", "--k", "0"]) == 2
    assert "--k" in capsys.readouterr().err
    assert (
        main(["score", "--predictions", str(tmp_path / "none.jsonl"), "--gold", str(gold), "--task", "nq"])
        == 2
    )
    assert "file not found" in capsys.readouterr().err
    assert main(["score", "--predictions", str(pred), "--gold", str(gold), "--task", "nq", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["em"] == 1.0
