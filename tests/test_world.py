"""The synthetic world: determinism, KILT shape (read back by the project's own loader), answers inside
gold passages, provenance, disjoint splits, FEVER balance, AIDA markers, and the `imprag world` CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from imprag.cli import main
from imprag.data.kilt import load_examples
from imprag.demo.world import (
    ALL_TASKS,
    EVAL_TASKS,
    RETRIEVAL_FREE,
    SEEN_QA,
    TASK_SPLITS,
    UNSEEN_FORMATS,
    UNSEEN_QA,
    build_world,
    generate_world,
)
from imprag.errors import UserError

SEED, N = 7, 400


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _answers(rec: dict) -> list[str]:
    return [o["answer"] for o in rec["output"] if "answer" in o]


def _prov(rec: dict) -> list[dict]:
    return [p for o in rec["output"] for p in o.get("provenance", [])]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=SEED, entities=N)
    return out


@pytest.fixture(scope="module")
def passages(world_dir) -> dict[str, dict]:
    return {p["id"]: p for p in _read(world_dir / "passages.jsonl")}


@pytest.fixture(scope="module")
def tasks(world_dir) -> dict[str, dict[str, list[dict]]]:
    return {t: {s: _read(world_dir / "tasks" / t / f"{s}.jsonl") for s in TASK_SPLITS[t]} for t in ALL_TASKS}


def test_task_groups_cover_the_paper_formats():
    assert SEEN_QA == ("nq", "hotpotqa")
    assert UNSEEN_QA == ("simpleqa", "2wikimultihopqa")
    assert UNSEEN_FORMATS == ("trex", "zsre", "fever", "aida")
    assert set(EVAL_TASKS) | set(RETRIEVAL_FREE) == set(ALL_TASKS)
    assert {"rc", "denoise", "nextsent"} <= set(RETRIEVAL_FREE)


def test_same_seed_gives_byte_identical_files(world_dir, tmp_path):
    generate_world(tmp_path / "again", seed=SEED, entities=N)
    first, second = _files(world_dir), _files(tmp_path / "again")
    assert len(first) == 1 + 1 + sum(len(s) for s in TASK_SPLITS.values())
    assert first == second
    generate_world(tmp_path / "other", seed=SEED + 1, entities=N)
    assert _files(tmp_path / "other")["passages.jsonl"] != first["passages.jsonl"]


def test_output_does_not_depend_on_hash_randomisation(world_dir, tmp_path):
    """A fresh interpreter with another PYTHONHASHSEED writes the same bytes (no set-order leaks)."""
    code = f"from imprag.demo.world import generate_world; generate_world({str(tmp_path / 'w')!r}, seed={SEED}, entities={N})"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert _files(tmp_path / "w") == _files(world_dir)


def test_passages_one_per_entity_40_to_90_words(passages):
    assert len(passages) == N
    titles = [p["title"] for p in passages.values()]
    assert len(set(titles)) == N  # every name is unique
    for p in passages.values():
        assert set(p) >= {"id", "title", "text"}
        assert 40 <= len(p["text"].split()) <= 90, p
        assert p["title"] in p["text"]  # the passage names its subject
    kinds = Counter(p["kind"] for p in passages.values())
    assert set(kinds) == {"person", "city", "country", "org", "work"}


def test_similar_named_distractors_exist(passages):
    """Near-miss twins: titles that differ in exactly one letter."""
    titles = sorted({p["title"] for p in passages.values()})
    by_len: dict[int, list[str]] = {}
    for t in titles:
        by_len.setdefault(len(t), []).append(t)
    pairs = sum(
        1
        for group in by_len.values()
        for i, a in enumerate(group)
        for b in group[i + 1 :]
        if sum(x != y for x, y in zip(a, b)) == 1
    )
    assert pairs >= N // 20


def test_every_file_is_kilt_and_loads(world_dir, tasks):
    for task in ALL_TASKS:
        for split in TASK_SPLITS[task]:
            path = world_dir / "tasks" / task / f"{split}.jsonl"
            rows = tasks[task][split]
            assert rows, f"{task}/{split} is empty"
            for r in rows:
                assert set(r) <= {"id", "input", "output", "meta"}
                assert isinstance(r["id"], str) and isinstance(r["output"], list)
                assert _answers(r) and all(isinstance(a, str) and a for a in _answers(r))
                if task in RETRIEVAL_FREE:
                    assert not _prov(r)
                else:
                    assert _prov(r) and isinstance(r["input"], str)
            # the project's own reader takes every line, with answers
            examples = load_examples(path, task, require_answers=True)
            assert len(examples) == len(rows)
            assert all(ex.prompt and ex.answers for ex in examples)
    for task in RETRIEVAL_FREE:
        assert not (world_dir / "tasks" / task / "dev.jsonl").exists()


def test_ids_unique_and_summary_counts_match(world_dir, tasks):
    ids = [r["id"] for t in tasks.values() for rows in t.values() for r in rows]
    assert len(ids) == len(set(ids))
    summary = json.loads((world_dir / "world.json").read_text())
    assert summary["seed"] == SEED and summary["entities"] == N and summary["passages"] == N
    assert summary["tasks"] == {
        t: {s: len(rows) for s, rows in splits.items()} for t, splits in tasks.items()
    }
    assert sum(summary["kinds"].values()) == N


def test_provenance_points_at_real_passages(tasks, passages):
    for task in EVAL_TASKS:
        for rows in tasks[task].values():
            for r in rows:
                for p in _prov(r):
                    assert p["passage_id"] in passages, (task, r)
                    assert passages[p["passage_id"]]["title"] == p["title"]


def test_answers_appear_verbatim_in_gold_passages(tasks, passages):
    for task in ("nq", "hotpotqa", "simpleqa", "2wikimultihopqa", "trex", "zsre"):
        for rows in tasks[task].values():
            for r in rows:
                gold = [passages[p["passage_id"]]["text"] for p in _prov(r)]
                (answer,) = _answers(r)
                assert any(answer in g for g in gold), (task, r)
                if task in ("nq", "simpleqa", "trex", "zsre"):
                    assert len(gold) == 1
                    assert answer.lower() not in r["input"].lower()  # not readable off the question


def test_multi_hop_chains_are_followable(tasks, passages):
    """Two-hop: the bridge passage's title is named in the first passage; the answer sits in the second."""
    n_chains = 0
    for task in ("hotpotqa", "2wikimultihopqa"):
        for rows in tasks[task].values():
            for r in rows:
                first, second = _prov(r)
                if r["meta"]["relation"].startswith("compare:"):
                    assert _answers(r)[0] in (first["title"], second["title"])
                    continue
                n_chains += 1
                assert second["title"] in passages[first["passage_id"]]["text"], r
                assert _answers(r)[0] in passages[second["passage_id"]]["text"], r
                assert _answers(r)[0] not in r["input"]
    assert n_chains > 100


def test_splits_ask_different_questions_about_different_entities(tasks):
    for task, splits in tasks.items():
        if len(splits) < 3:
            continue
        inputs = {s: {json.dumps(r["input"]) for r in rows} for s, rows in splits.items()}
        subjects = {s: {r["meta"]["subject"] for r in rows} for s, rows in splits.items()}
        for a, b in (("train", "dev"), ("train", "test"), ("dev", "test")):
            assert not inputs[a] & inputs[b], (task, a, b)
            assert not subjects[a] & subjects[b], (task, a, b)
    # retrieval-free tasks only use train entities' passages
    train_titles = {r["output"][-1]["provenance"][0]["title"] for r in tasks["nq"]["train"]}
    dev_titles = {r["output"][-1]["provenance"][0]["title"] for r in tasks["nq"]["dev"] + tasks["nq"]["test"]}
    rc_contexts = " ".join(r["input"]["context"] for r in tasks["rc"]["train"])
    assert sum(t + ":" in rc_contexts for t in train_titles) > len(train_titles) // 2
    assert not any(t + ": " + t in rc_contexts for t in dev_titles)


def test_seen_training_task_is_the_largest(tasks):
    assert len(tasks["nq"]["train"]) > 4 * len(tasks["nq"]["dev"])
    # unseen formats: a small train split (at most the dev size)
    for task in UNSEEN_QA + UNSEEN_FORMATS:
        assert len(tasks[task]["train"]) <= len(tasks[task]["dev"])


def test_unseen_qa_uses_other_relations_than_seen_qa(tasks):
    rels = {
        t: {r["meta"]["relation"] for s in tasks[t].values() for r in s} for t in EVAL_TASKS if t != "aida"
    }
    assert not rels["nq"] & rels["simpleqa"]
    assert not rels["hotpotqa"] & rels["2wikimultihopqa"]
    assert any(r.startswith("compare:") for r in rels["2wikimultihopqa"])
    assert len(rels["trex"]) >= 15
    # zsRE is zero-shot over relations: dev/test relations never occur in its train split
    zs = {s: {r["meta"]["relation"] for r in rows} for s, rows in tasks["zsre"].items()}
    assert not zs["train"] & (zs["dev"] | zs["test"])


def test_slot_filling_inputs(tasks):
    for task in ("trex", "zsre"):
        for rows in tasks[task].values():
            for r in rows:
                entity, relation = r["input"].split(" [SEP] ")
                assert entity == _prov(r)[0]["title"] and relation
    trex_labels = {r["input"].split(" [SEP] ")[1] for r in tasks["trex"]["dev"]}
    zsre_labels = {r["input"].split(" [SEP] ")[1] for r in tasks["zsre"]["dev"]}
    assert "place of birth" in trex_labels | {r["input"].split(" [SEP] ")[1] for r in tasks["trex"]["test"]}
    assert not trex_labels & zsre_labels


def test_fever_labels_balanced_and_claims_use_gold_passage(tasks, passages):
    labels = Counter(_answers(r)[0] for rows in tasks["fever"].values() for r in rows)
    assert set(labels) == {"SUPPORTS", "REFUTES"}
    share = labels["SUPPORTS"] / sum(labels.values())
    assert 0.4 <= share <= 0.6, labels
    for rows in tasks["fever"].values():
        for r in rows:
            (p,) = _prov(r)
            assert p["title"] in r["input"] or p["title"].lower() in r["input"].lower()


def test_aida_mentions_are_marked_and_link_to_titles(tasks, passages):
    differs = total = 0
    for rows in tasks["aida"].values():
        for r in rows:
            text = r["input"]
            assert text.count("[START_ENT]") == 1 and text.count("[END_ENT]") == 1
            mention = text.split("[START_ENT]")[1].split("[END_ENT]")[0].strip()
            assert mention == r["meta"]["mention"]
            (p,) = _prov(r)
            assert _answers(r) == [p["title"]]
            assert (
                mention in passages[p["passage_id"]]["title"] or mention in passages[p["passage_id"]]["text"]
            )
            total += 1
            differs += mention != p["title"]
    assert differs / total > 0.6  # mostly a surname, acronym or short form, not the full title


def test_retrieval_free_tasks(tasks):
    for r in tasks["rc"]["train"]:
        assert set(r["input"]) == {"context", "question"}
        assert _answers(r)[0] in r["input"]["context"]
    for r in tasks["denoise"]["train"]:
        assert "[MASK]" in r["input"] and "[MASK]" not in _answers(r)[0]
        head, _, tail = r["input"].partition("[MASK]")
        assert _answers(r)[0].startswith(head) and _answers(r)[0].endswith(tail.split("[MASK]")[-1])
    for task in ("nextsent", "prevsent"):
        for r in tasks[task]["train"]:
            assert _answers(r)[0] not in r["input"]


def test_world_scales_with_unique_names():
    world = build_world(seed=1, entities=3000)
    assert len(world.entities) == 3000
    assert len({e.name.lower() for e in world.entities}) == 3000


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(UserError, match="--entities"):
        generate_world(tmp_path, seed=0, entities=0)
    assert not any(tmp_path.iterdir())


def test_cli_writes_a_world(tmp_path, capsys):
    assert main(["world", "--seed", "3", "--out", str(tmp_path / "w"), "--entities", "120"]) == 0
    out = capsys.readouterr().out
    assert "120 passages" in out
    summary = json.loads((tmp_path / "w" / "world.json").read_text())
    assert summary["seed"] == 3 and summary["entities"] == 120
    assert (tmp_path / "w" / "tasks" / "aida" / "test.jsonl").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--entities", "0"],
        ["--entities", "many"],
        ["--seed", "x"],
        [],  # no --out
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, argv):
    if argv != []:
        argv = ["--out", str(tmp_path / "w"), *argv]
    assert main(["world", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("imprag world: error:"), err
    assert not (tmp_path / "w").exists()


def test_half_the_nq_train_questions_carry_a_request_that_no_unseen_instruction_shares(tasks):
    from imprag.data.tasks import AIDA_TEMPLATE, FEVER_TEMPLATE, SLOT_TEMPLATE
    from imprag.demo.world_tasks import QA_REQUESTS

    train = [r["input"] for r in tasks["nq"]["train"]]
    with_request = [q for q in train if any(q.endswith(" " + x) for x in QA_REQUESTS)]
    assert 0.4 < len(with_request) / len(train) < 0.6
    assert not any(q.endswith(x) for q in (r["input"] for r in tasks["nq"]["test"]) for x in QA_REQUESTS)
    function_words = {"a", "for", "in", "is", "it", "the", "this"}
    unseen_words = set(re.findall(r"[a-z]+", (SLOT_TEMPLATE + FEVER_TEMPLATE + AIDA_TEMPLATE).lower()))
    request_words = set(re.findall(r"[a-z]+", " ".join(QA_REQUESTS).lower()))
    assert request_words & unseen_words <= function_words
