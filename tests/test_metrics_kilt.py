"""EM/F1 default to the official KILT/SQuAD rules: checked against an independent copy of KILT's
`kilt/eval_downstream.py` (normalize_answer, _exact_match_score, _f1_score, max over gold answers that are
non-empty after strip) on tricky cases, through the library and through `imprag score`."""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import pytest

from imprag.cli import main
from imprag.eval.metrics import exact_match, f1_score, normalize_answer


# ---- an independent copy of the official rules (KILT eval_downstream.py = SQuAD v1.1 evaluate.py)
def official_normalize(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def official_em(prediction, ground_truth):
    return official_normalize(prediction) == official_normalize(ground_truth)


def official_f1(prediction, ground_truth):
    prediction_tokens = official_normalize(prediction).split()
    ground_truth_tokens = official_normalize(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def official_max(metric, prediction, golds):
    golds = [g.strip() for g in golds if g and len(g.strip()) > 0]
    return max(metric(prediction, g) for g in golds)


# (prediction, gold answers): accents, Unicode dashes/quotes, numbers with commas, articles, case
TRICKY = [
    ("Röntgen", ["Rontgen"]),
    ("Röntgen", ["röntgen"]),
    ("José Martí", ["Jose Marti"]),
    ("São Paulo", ["Sao Paulo", "São Paulo"]),
    ("1990–1995", ["1990-1995"]),  # en dash vs hyphen
    ("1990—1995", ["1990 1995"]),  # em dash
    ("1990-1995", ["19901995"]),  # ASCII hyphen is deleted
    ("“Hello”", ['"hello"']),  # curly vs straight quotes
    ("‘Hi’ there", ["'Hi' there"]),
    ("«Le Monde»", ["Le Monde"]),
    ("1,000", ["1000"]),
    ("1,000", ["1 000"]),
    ("3.5 million", ["35 million"]),
    ("The Beatles", ["Beatles"]),
    ("a beatles", ["the Beatles"]),
    ("theatre", ["atre"]),
    ("An apple a day", ["apple day"]),
    ("the", ["a"]),  # both normalise to "": the official EM is 1
    ("", ["the"]),
    ("Paris", ["", "  ", "Paris"]),  # empty golds are dropped
    ("Ⅳ", ["IV"]),  # compatibility characters are not folded
    ("ǅungla", ["džungla"]),
    ("İstanbul", ["istanbul"]),  # lower() gives i + combining dot: no match
    ("Barack Obama", ["Obama", "President Obama"]),
    ("the president Barack Obama", ["Barack Obama"]),
    ("New  York\tCity ", ["new york city"]),
    ("A: Paris", ["Paris"]),
    ("O'Neill", ["ONeill"]),
    ("naïve—approach", ["naive approach"]),
    ("x x", ["x"]),
]


@pytest.mark.parametrize("pred,golds", TRICKY)
def test_library_equals_official_copy(pred, golds):
    assert normalize_answer(pred) == official_normalize(pred)
    assert exact_match(pred, golds) == float(official_max(official_em, pred, golds))
    assert f1_score(pred, golds) == pytest.approx(official_max(official_f1, pred, golds))


def test_the_official_rule_differs_from_the_folding_variant_where_it_should():
    assert exact_match("Röntgen", ["Rontgen"]) == 0.0
    assert exact_match("Röntgen", ["Rontgen"], normalization="unicode") == 1.0
    assert exact_match("1990–1995", ["1990-1995"]) == 0.0
    assert exact_match("1990–1995", ["1990-1995"], normalization="unicode") == 1.0
    assert exact_match("1,000", ["1000"]) == 1.0  # ASCII punctuation is deleted by both


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_imprag_score_defaults_to_the_official_rule(tmp_path, capsys):
    gold = _write(
        tmp_path / "nq-dev.jsonl",
        [
            {"id": str(i), "input": "q", "output": [{"answer": g} for g in golds]}
            for i, (_, golds) in enumerate(TRICKY)
        ],
    )
    preds = _write(
        tmp_path / "preds.jsonl",
        [{"id": str(i), "output": [{"answer": p}]} for i, (p, _) in enumerate(TRICKY)],
    )
    em = sum(official_max(official_em, p, g) for p, g in TRICKY) / len(TRICKY)
    f1 = sum(official_max(official_f1, p, g) for p, g in TRICKY) / len(TRICKY)
    out = tmp_path / "m.json"
    assert main(["score", "--predictions", str(preds), "--gold", str(gold), "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["normalization"] == "kilt"
    assert doc["metrics"]["em"] == pytest.approx(em) and doc["metrics"]["f1"] == pytest.approx(f1)
    assert "normalisation: kilt" in capsys.readouterr().out
    loose = tmp_path / "u.json"
    args = ["score", "--predictions", str(preds), "--gold", str(gold), "--out", str(loose)]
    assert main([*args, "--normalize", "unicode"]) == 0
    doc_u = json.loads(loose.read_text())
    assert doc_u["normalization"] == "unicode" and doc_u["metrics"]["em"] > doc["metrics"]["em"]
