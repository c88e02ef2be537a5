"""Answer and retrieval metrics (pure Python): KILT/SQuAD exact match and F1, FEVER accuracy, answer
recall@k, and passage-level R-precision / recall@k against gold provenance.

EM/F1 use the official KILT (= SQuAD) `normalize_answer` by default, exactly: lowercase, delete the
ASCII `string.punctuation` characters, drop the articles a/an/the as whole words, collapse whitespace;
nothing else ("Röntgen" != "Rontgen", "1990–1995" != "1990-1995", "1,000" == "1000"). Numbers that are
compared with published ones need this rule.

normalization="unicode" is a looser variant (`normalize_unicode`): additionally every Unicode
punctuation character (dashes, curly quotes, guillemets...) counts as punctuation and accents are
folded (NFKD, combining marks removed), so "Jose" matches "José". Answer recall and FEVER label
reading always use this variant (see `has_answer`).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

from imprag.passage import passage_text

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_ASCII_PUNCT = frozenset(string.punctuation)

# label words a model (or a file) may use for FEVER's two classes, after normalisation
FEVER_LABELS = {
    "supports": "SUPPORTS",
    "support": "SUPPORTS",
    "supported": "SUPPORTS",
    "true": "SUPPORTS",
    "yes": "SUPPORTS",
    "refutes": "REFUTES",
    "refute": "REFUTES",
    "refuted": "REFUTES",
    "false": "REFUTES",
    "no": "REFUTES",
}


def _is_punct(ch: str) -> bool:
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


NORMALIZATIONS = ("kilt", "unicode")


def normalize_answer(s: str) -> str:
    """The official KILT/SQuAD normalisation, unchanged: lower, remove punctuation, articles, extra spaces."""
    s = (s or "").lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def normalize_unicode(s: str, punct: str = "") -> str:
    """KILT/SQuAD normalisation, unicode-safe (see module docstring). `punct=" "` turns punctuation
    into word breaks instead of deleting it (used by answer recall's word matching)."""
    s = unicodedata.normalize("NFKD", s or "")
    s = "".join(ch for ch in s if not unicodedata.combining(ch))
    s = s.lower()
    s = "".join(punct if _is_punct(ch) else ch for ch in s)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    """Normalised (unicode rule), non-empty gold answers (a gold that normalises to nothing cannot be
    matched)."""
    if isinstance(golds, str):
        golds = [golds]
    return [g for g in (normalize_unicode(x) for x in golds) if g]


def _kilt_golds(golds: str | Iterable[str]) -> list[str]:
    """KILT's gold answers: every answer that is not empty after strip(), kept as given."""
    if isinstance(golds, str):
        golds = [golds]
    return [g for g in golds if g and g.strip()]


def _check_normalization(normalization: str) -> None:
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")


def exact_match(prediction: str, golds: str | Iterable[str], normalization: str = "kilt") -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0.

    "kilt": KILT's max over golds of normalize_answer(pred) == normalize_answer(gold) (so "the" equals
    "a": both normalise to ""); "unicode": `normalize_unicode`, and an empty normalised answer never
    matches."""
    _check_normalization(normalization)
    if normalization == "kilt":
        p = normalize_answer(prediction)
        return max((float(p == normalize_answer(g)) for g in _kilt_golds(golds)), default=0.0)
    p = normalize_unicode(prediction)
    return float(bool(p) and p in _golds(golds))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: str | Iterable[str], normalization: str = "kilt") -> float:
    """Token-level F1 of the normalised prediction, max over gold answers (KILT's `_f1_score`)."""
    _check_normalization(normalization)
    if normalization == "kilt":
        p = normalize_answer(prediction).split()
        return max((_f1(p, normalize_answer(g).split()) for g in _kilt_golds(golds)), default=0.0)
    p = normalize_unicode(prediction).split()
    return max((_f1(p, g.split()) for g in _golds(golds)), default=0.0)


def fever_label(text: str) -> str | None:
    """ "True" / "SUPPORTS" / "yes, ..." -> "SUPPORTS"; the false side -> "REFUTES"; otherwise None.
    The whole normalised answer, else its first word, must be a label word."""
    norm = normalize_unicode(text)
    if norm in FEVER_LABELS:
        return FEVER_LABELS[norm]
    first = norm.split(" ", 1)[0]
    return FEVER_LABELS.get(first)


def fever_accuracy(prediction: str, golds: str | Iterable[str]) -> float:
    """1.0 if the prediction's label equals a gold label (True/False and SUPPORTS/REFUTES both accepted)."""
    if isinstance(golds, str):
        golds = [golds]
    p = fever_label(prediction)
    return float(p is not None and p in {fever_label(g) for g in golds})


MATCH_MODES = ("word", "substring")


def has_answer(text: str, golds: str | Iterable[str], match: str = "word") -> bool:
    """A normalised gold answer occurs in the normalised text (`normalize_unicode`: accents folded,
    Unicode punctuation counts).

    match="word" (default): on word boundaries, so the answer "no" is not found inside "north"; tried
    with punctuation deleted ("1,000" finds "1000") and with punctuation as a word break
    ("Schoenberg's" finds "Schoenberg", "2002–2003" finds "2003").
    match="substring": any character position (how the reference numbers in ../shared/data/README.md
    were computed; it over-counts short answers such as HotpotQA's yes/no).
    """
    if match not in MATCH_MODES:
        raise ValueError(f"match must be one of {MATCH_MODES}, got {match!r}")
    if match == "substring":
        t = normalize_unicode(text)
        return any(g in t for g in _golds(golds))
    if isinstance(golds, str):
        golds = [golds]
    golds = list(golds)
    for punct in ("", " "):
        t = f" {normalize_unicode(text, punct)} "
        if any(f" {g} " in t for g in (normalize_unicode(x, punct) for x in golds) if g):
            return True
    return False


# ---- retrieval -------------------------------------------------------------------------------------


def _as_mapping(p: Any) -> Mapping[str, Any]:
    if is_dataclass(p) and not isinstance(p, type):
        return asdict(p)
    if isinstance(p, Mapping):
        return p
    if isinstance(p, str):
        return {"text": p}
    raise TypeError(f"expected a passage/provenance mapping, Provenance or str, got {type(p).__name__}")


def _pid(p: Mapping[str, Any]) -> str | None:
    v = p.get("passage_id", p.get("id"))
    return None if v is None else str(v)


def _title(p: Mapping[str, Any]) -> str | None:
    t = p.get("title")
    return " ".join(str(t).split()).lower() if t else None


def answer_recall(
    golds: str | Iterable[str],
    passages: Sequence[Any],
    k: int,
    kind: str = "qa",
    gold_titles: Iterable[str] = (),
    match: str = "word",
) -> float | None:
    """1.0 if one of the top-k passages holds a gold answer, else 0.0; None where it does not apply.

    qa/slot: a normalised gold answer inside the passage's normalised "title: text" (`match`: see
    `has_answer`).
    aida (entity linking): the gold page title equals a retrieved passage's title (normalised).
    fever: True/False is never inside a passage, so recall is page-level: a retrieved passage's title
    equals a gold provenance title (`gold_titles`); None when there are none.
    """
    top = [_as_mapping(p) for p in passages[:k]]
    if kind == "fever":
        titles = {normalize_unicode(t) for t in gold_titles if t}
        if not titles:
            return None
        return float(any(normalize_unicode(p.get("title") or "") in titles for p in top))
    if kind == "aida":
        titles = set(_golds(golds)) | {normalize_unicode(t) for t in gold_titles if t}
        if not titles:
            return None
        return float(any(normalize_unicode(p.get("title") or "") in titles for p in top))
    gold = _golds(golds)
    if not gold:
        return None
    texts = (passage_text(p) if "text" in p else str(p.get("title") or "") for p in top)
    return float(any(has_answer(t, gold, match) for t in texts))


def _level(gold: Sequence[Mapping[str, Any]], retrieved: Sequence[Mapping[str, Any]]) -> str:
    """Compare by passage_id when both sides have it, else wikipedia_id, else (page) title."""
    for key, get in (("passage", _pid), ("wikipedia_id", lambda p: p.get("wikipedia_id"))):
        if all(get(g) is not None for g in gold) and any(get(r) is not None for r in retrieved):
            return key
    return "title"


def _key(p: Mapping[str, Any], level: str) -> str | None:
    if level == "passage":
        return _pid(p)
    if level == "wikipedia_id":
        v = p.get("wikipedia_id")
        return None if v is None else str(v)
    return _title(p)


def _gold_sets(gold: Sequence[Any]) -> list[list[Mapping[str, Any]]]:
    """A flat provenance list is one evidence set; a list of lists is alternative sets (KILT)."""
    if gold and all(isinstance(g, list | tuple) for g in gold):
        return [[_as_mapping(x) for x in s] for s in gold if s]
    return [[_as_mapping(x) for x in gold]] if gold else []


def _ranked_keys(retrieved: Sequence[Mapping[str, Any]], level: str) -> list[str | None]:
    """Keys in rank order with repeats dropped (several passages of one page count once at page level)."""
    out: list[str | None] = []
    for r in retrieved:
        key = _key(r, level)
        if key is None or key not in out:
            out.append(key)
    return out


def r_precision(gold: Sequence[Any], retrieved: Sequence[Any]) -> float | None:
    """KILT R-precision: for an evidence set of R distinct items, the share of them in the top R;
    max over alternative sets. None without gold provenance."""
    ret = [_as_mapping(r) for r in retrieved]
    best = None
    for gset in _gold_sets(gold):
        level = _level(gset, ret)
        keys = {k for k in (_key(g, level) for g in gset) if k is not None}
        if not keys:
            continue
        top = _ranked_keys(ret, level)[: len(keys)]
        score = sum(1 for k in top if k in keys) / len(keys)
        best = score if best is None else max(best, score)
    return best


def provenance_recall(gold: Sequence[Any], retrieved: Sequence[Any], k: int) -> float | None:
    """KILT recall@k: 1.0 if every item of some gold evidence set is in the top k, else 0.0. None
    without gold provenance."""
    ret = [_as_mapping(r) for r in retrieved]
    best = None
    for gset in _gold_sets(gold):
        level = _level(gset, ret)
        keys = {k2 for k2 in (_key(g, level) for g in gset) if k2 is not None}
        if not keys:
            continue
        top = set(_ranked_keys(ret, level)[:k])
        score = float(keys <= top)
        best = score if best is None else max(best, score)
    return best


# ---- per example and aggregate ---------------------------------------------------------------------


def score_example(
    kind: str,
    prediction: str,
    answers: Sequence[str],
    retrieved: Sequence[Any] | None = None,
    gold_provenance: Sequence[Any] | None = None,
    ks: Sequence[int] = (1, 5, 10),
    match: str = "word",
    normalization: str = "kilt",
) -> dict[str, float | None]:
    """Every metric that applies to one example -> {"em", "f1", "answer_recall@k", "r_precision",
    "provenance_recall@k"}; FEVER's "em" is label accuracy (also reported as "accuracy"). EM/F1 use
    `normalization` ("kilt": the official rule)."""
    rec: dict[str, float | None] = {}
    if kind == "fever":
        acc = fever_accuracy(prediction, answers)
        rec["em"] = acc
        rec["accuracy"] = acc
    else:
        rec["em"] = exact_match(prediction, answers, normalization)
        rec["f1"] = f1_score(prediction, answers, normalization)
    gold_prov = list(gold_provenance or [])
    if retrieved is not None:
        titles = [str(_as_mapping(g).get("title")) for g in gold_prov if _as_mapping(g).get("title")]
        has_text = any("text" in _as_mapping(p) for p in retrieved)
        for k in ks:
            if kind in ("fever", "aida") or has_text:
                rec[f"answer_recall@{k}"] = answer_recall(answers, retrieved, k, kind, titles, match)
        if gold_prov:
            rec["r_precision"] = r_precision(gold_prov, retrieved)
            for k in ks:
                rec[f"provenance_recall@{k}"] = provenance_recall(gold_prov, retrieved, k)
    return rec


def aggregate(records: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per-example records -> {"n": count, metric: mean over the records where it is not None}."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    n = 0
    for r in records:
        n += 1
        for key, v in r.items():
            if isinstance(v, bool) or isinstance(v, int | float):
                sums[key] = sums.get(key, 0.0) + float(v)
                counts[key] = counts.get(key, 0) + 1
    out: dict[str, float] = {"n": n}
    out.update({key: sums[key] / counts[key] for key in sums})
    return out
