"""Metrics: normalisation edge cases, EM/F1, FEVER labels, answer recall, provenance R-precision/recall."""

from __future__ import annotations

import json

import pytest

from imprag.data.example import Provenance
from imprag.eval.metrics import (
    aggregate,
    answer_recall,
    exact_match,
    f1_score,
    fever_accuracy,
    fever_label,
    has_answer,
    normalize_unicode,
    provenance_recall,
    r_precision,
    score_example,
)

# (prediction, gold answers, expected EM) under normalization="unicode" (the folding variant)
EM_CASES = [
    ("The Beatles", ["Beatles"], 1.0),  # article dropped
    ("a beatles", ["the Beatles"], 1.0),
    ("An apple", ["apple"], 1.0),
    ("theatre", ["atre"], 0.0),  # "the" only as a whole word
    ("Paris.", ["paris"], 1.0),  # punctuation
    ("Paris!!", ["Paris"], 1.0),
    ("O'Neill", ["ONeill"], 1.0),  # apostrophe deleted, not spaced
    ("“Hello”", ['"hello"'], 1.0),  # curly vs straight quotes
    ("José Martí", ["Jose Marti"], 1.0),  # accents folded
    ("Zoë", ["Zoe"], 1.0),
    ("São Paulo", ["Sao Paulo"], 1.0),
    ("1990–1995", ["1990-1995"], 1.0),  # en dash vs hyphen
    ("1990—1995", ["1990-1995"], 1.0),  # em dash
    ("1,000", ["1000"], 1.0),  # thousands separator
    ("1,000", ["1 000"], 0.0),
    ("3.5", ["35"], 1.0),  # deletion, as SQuAD does
    ("  New   York\tCity ", ["new york city"], 1.0),  # whitespace
    ("new york", ["New York City", "NYC", "new york"], 1.0),  # multiple golds: max
    ("NYC", ["New York City", "nyc"], 1.0),
    ("Boston", ["New York City", "NYC"], 0.0),
    ("", ["Paris"], 0.0),  # empty prediction
    ("", [""], 0.0),  # a gold that normalises to nothing matches nothing
    ("the", ["a"], 0.0),
    ("Paris", [], 0.0),  # no gold answers
    ("ǅungla", ["DŽungla"], 1.0),  # NFKD compatibility letters, case-folded
    ("Ⅳ", ["IV"], 1.0),  # roman numeral compatibility character
]


@pytest.mark.parametrize("pred,golds,expected", EM_CASES)
def test_exact_match_table(pred, golds, expected):
    assert exact_match(pred, golds, normalization="unicode") == expected


def test_normalize_answer_examples():
    assert normalize_unicode("The  Quick, Brown  Fox!") == "quick brown fox"
    assert normalize_unicode("«Le Monde»") == "le monde"
    assert normalize_unicode("Ünïcödé") == "unicode"
    assert normalize_unicode("") == ""
    assert normalize_unicode("A") == ""


# (prediction, golds, expected F1)
F1_CASES = [
    ("Barack Obama", ["Obama"], 2 * 0.5 * 1 / 1.5),
    ("the president Barack Obama", ["Barack Obama"], 2 * (2 / 3) * 1 / (2 / 3 + 1)),
    ("Obama", ["Barack Obama", "Obama"], 1.0),
    ("", ["Obama"], 0.0),
    ("x y", ["z"], 0.0),
]


@pytest.mark.parametrize("normalization", ["kilt", "unicode"])
@pytest.mark.parametrize("pred,golds,expected", F1_CASES)
def test_f1_table(pred, golds, expected, normalization):
    assert f1_score(pred, golds, normalization) == pytest.approx(expected)


@pytest.mark.parametrize("normalization", ["kilt", "unicode"])
def test_f1_counts_repeated_tokens(normalization):
    # "b" vs "b b": precision 1, recall 1/2 -> 2/3
    assert f1_score("a a b", ["a b b"], normalization) == pytest.approx(2 / 3)
    assert f1_score("x x", ["x"], normalization) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="normalization"):
        exact_match("x", ["x"], normalization="fold")


@pytest.mark.parametrize(
    "text,label",
    [
        ("True", "SUPPORTS"),
        ("true.", "SUPPORTS"),
        ("SUPPORTS", "SUPPORTS"),
        ("Yes, it is", "SUPPORTS"),
        ("False", "REFUTES"),
        ("REFUTES", "REFUTES"),
        (" false ", "REFUTES"),
        ("maybe", None),
        ("", None),
        ("NOT ENOUGH INFO", None),
    ],
)
def test_fever_label(text, label):
    assert fever_label(text) == label


def test_fever_accuracy_accepts_both_label_sets():
    assert fever_accuracy("True", ["SUPPORTS"]) == 1.0
    assert fever_accuracy("SUPPORTS", ["True"]) == 1.0
    assert fever_accuracy("False", ["REFUTES"]) == 1.0
    assert fever_accuracy("True", ["REFUTES"]) == 0.0
    assert fever_accuracy("I think", ["True"]) == 0.0


def test_has_answer_word_boundaries_vs_substring():
    text = "The North Atlantic is not calm."
    assert not has_answer(text, ["no"])  # word mode: "no" is not inside "north"/"not"
    assert has_answer(text, ["no"], match="substring")
    assert has_answer(text, ["north atlantic"])
    assert has_answer("It cost 1,000 dollars", ["1000"])
    assert has_answer("Born in São Paulo.", ["Sao Paulo"])
    assert has_answer("began with Arnold Schoenberg's technique", ["Arnold Schoenberg"])  # possessive
    assert has_answer("the 2002–2003 season", ["2003"])  # dash as a word break
    assert has_answer("O'Neill won", ["ONeill"]) and has_answer("ONeill won", ["O'Neill"])
    assert not has_answer("anything", [""])  # empty gold never matches
    with pytest.raises(ValueError):
        has_answer("x", ["x"], match="fuzzy")


def test_answer_recall_qa_slot_aida_fever():
    ps = [
        {"id": "p1", "title": "France", "text": "France is a country."},
        {"id": "p2", "title": "Paris", "text": "Paris is the capital of France."},
    ]
    assert answer_recall(["Paris"], ps, 1) == 0.0
    assert answer_recall(["Paris"], ps, 2) == 1.0
    assert answer_recall(["capital"], ps, 1) == 0.0
    assert answer_recall(["capital"], ps, 2) == 1.0
    assert answer_recall([], ps, 2) is None
    # entity linking: gold title == retrieved title (normalised), not substring
    assert answer_recall(["paris"], ps, 1, kind="aida") == 0.0
    assert answer_recall(["Paris"], ps, 2, kind="aida") == 1.0
    assert answer_recall(["Pari"], ps, 2, kind="aida") == 0.0
    # FEVER: page level against gold provenance titles
    assert answer_recall(["True"], ps, 2, kind="fever", gold_titles=["Paris"]) == 1.0
    assert answer_recall(["True"], ps, 1, kind="fever", gold_titles=["Paris"]) == 0.0
    assert answer_recall(["True"], ps, 2, kind="fever") is None


def test_answer_recall_first_passage_only():
    ps = [{"title": "Paris", "text": "A city."}, {"title": "X", "text": "y"}]
    assert answer_recall(["Paris"], ps, 1) == 1.0  # passage_text includes the title


def test_r_precision_and_recall_passage_level():
    gold = [Provenance(passage_id="w1", title="A"), Provenance(passage_id="w2", title="B")]
    ranked = [{"passage_id": "w1"}, {"passage_id": "w9"}, {"passage_id": "w2"}]
    assert r_precision(gold, ranked) == 0.5  # R=2: one of the top 2
    assert provenance_recall(gold, ranked, 2) == 0.0  # all-or-nothing, as KILT
    assert provenance_recall(gold, ranked, 3) == 1.0
    assert r_precision(gold, [{"id": "w2"}, {"id": "w1"}]) == 1.0  # passage records use "id"
    assert r_precision([], ranked) is None
    assert provenance_recall([], ranked, 5) is None


def test_page_level_falls_back_to_wikipedia_id_then_title_and_dedupes_pages():
    gold = [
        Provenance(wikipedia_id="10", title="Ed Wood"),
        Provenance(wikipedia_id="20", title="Scott Derrickson"),
    ]
    # retrieved passages of the same page count once at page level
    ranked = [
        {"passage_id": "x1", "wikipedia_id": "10", "title": "Ed Wood"},
        {"passage_id": "x2", "wikipedia_id": "10", "title": "Ed Wood"},
        {"passage_id": "x3", "wikipedia_id": "20", "title": "Scott Derrickson"},
    ]
    assert r_precision(gold, ranked) == 1.0
    assert provenance_recall(gold, ranked, 2) == 1.0
    # no wikipedia_id on the retrieved side: titles (case/whitespace-insensitive)
    by_title = [{"passage_id": "x1", "title": "ed  wood"}, {"passage_id": "x9", "title": "Other"}]
    assert r_precision(gold, by_title) == 0.5
    assert provenance_recall(gold, by_title, 2) == 0.0


def test_alternative_evidence_sets_take_the_max():
    sets = [[{"passage_id": "a"}, {"passage_id": "b"}], [{"passage_id": "c"}]]
    assert r_precision(sets, [{"passage_id": "c"}, {"passage_id": "a"}]) == 1.0
    assert provenance_recall(sets, [{"passage_id": "a"}, {"passage_id": "z"}], 2) == 0.0
    assert provenance_recall(sets, [{"passage_id": "z"}, {"passage_id": "c"}], 2) == 1.0


def test_score_example_and_aggregate():
    retrieved = [{"passage_id": "w1", "title": "Paris", "text": "Paris is the capital of France."}]
    r1 = score_example("qa", "Paris", ["Paris"], retrieved, [Provenance(passage_id="w1")], ks=(1,))
    assert r1 == {
        "em": 1.0,
        "f1": 1.0,
        "answer_recall@1": 1.0,
        "r_precision": 1.0,
        "provenance_recall@1": 1.0,
    }
    r2 = score_example("qa", "Lyon", ["Paris"], None, [Provenance(passage_id="w1")], ks=(1,))
    assert r2 == {"em": 0.0, "f1": 0.0}
    r3 = score_example("fever", "true", ["True"])
    assert r3 == {"em": 1.0, "accuracy": 1.0}
    agg = aggregate([r1, r2, {"em": None, "id": "ignored"}])
    assert agg["n"] == 3
    assert agg["em"] == 0.5  # None values do not count
    assert agg["answer_recall@1"] == 1.0
    assert "id" not in agg
    assert aggregate([]) == {"n": 0}


def test_answer_recall_reproduces_reference_numbers(shared_data):
    """bm25s over the real passages (README's recipe): substring mode gives README's answer recall,
    word mode matches it on NQ and differs on HotpotQA only for yes/no answers ("no" inside "north");
    passage-level recall gives README's gold-passage recall."""
    bm25s = pytest.importorskip("bm25s")
    from imprag.data.kilt import load_examples
    from imprag.passage import passage_text

    passages = [json.loads(line) for line in (shared_data / "wiki" / "passages.jsonl").open()]
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize([passage_text(p) for p in passages], stopwords="en", show_progress=False),
        show_progress=False,
    )

    def ranked(path, task):
        ex = load_examples(path, task)
        docs, _ = retriever.retrieve(
            bm25s.tokenize([e.input for e in ex], stopwords="en", show_progress=False),
            k=20,
            show_progress=False,
        )
        return [(e, [passages[i] for i in d]) for e, d in zip(ex, docs)]

    def mean(rows, fn, ks):
        return {k: sum(fn(e, r, k) for e, r in rows) / len(rows) for k in ks}

    nq = ranked(shared_data / "nq" / "dev.jsonl", "nq")
    ks = (1, 5, 10)
    sub = mean(nq, lambda e, r, k: answer_recall(e.answers, r, k, match="substring"), ks)
    assert sub == pytest.approx({1: 0.722, 5: 0.858, 10: 0.902}, abs=0.005)
    word = mean(nq, lambda e, r, k: answer_recall(e.answers, r, k), ks)
    assert word == pytest.approx({1: 0.722, 5: 0.858, 10: 0.902}, abs=0.005)
    gold = mean(nq, lambda e, r, k: provenance_recall(e.provenance, r, k), (5, 10, 20))
    assert gold == pytest.approx({5: 0.840, 10: 0.886, 20: 0.912}, abs=0.005)

    hp = ranked(shared_data / "hotpotqa" / "dev.jsonl", "hotpotqa")
    hsub = mean(hp, lambda e, r, k: answer_recall(e.answers, r, k, match="substring"), (1, 5, 10, 20))
    assert hsub == pytest.approx({1: 0.29, 5: 0.62, 10: 0.76, 20: 0.82}, abs=0.011)
    differ = [
        e.answers
        for e, r in hp
        if answer_recall(e.answers, r, 20) != answer_recall(e.answers, r, 20, match="substring")
    ]
    assert differ and all(a in (["yes"], ["no"]) for a in differ)
