"""`imprag demo --world DIR`: the folder checked and planned (what is trained on, evaluated, skipped, built),
read only, and one clear line for each kind of unfit folder; no model is trained here."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from imprag.cli import main
from imprag.data.kilt import load_examples
from imprag.data.tasks import EVAL_TASKS
from imprag.demo.layout import inspect_world
from imprag.demo.pipeline import Demo, DemoConfig
from imprag.demo.world import generate_world


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "world"
    generate_world(out, seed=0, entities=60)
    return out


@pytest.fixture
def world(generated, tmp_path) -> Path:
    """A user's folder: the generated world without world.json, T-REx's test split, AIDA and every
    retrieval-free task (so those must be built from the passages)."""
    w = tmp_path / "mine"
    shutil.copytree(generated, w)
    (w / "world.json").unlink()
    (w / "tasks" / "trex" / "test.jsonl").unlink()
    for task in ("aida", "rc", "denoise", "nextsent", "prevsent"):
        shutil.rmtree(w / "tasks" / task)
    return w


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def demo(world: Path, tmp_path: Path, backbone: str = "tiny") -> Demo:
    return Demo(DemoConfig(out=tmp_path / "out", size="tiny", backbone=backbone, world=world))


def test_plan_evaluates_what_is_there_and_names_what_is_skipped(world, tmp_path):
    plan = demo(world, tmp_path).plan
    assert plan.evaluate == [t for t in EVAL_TASKS if t not in ("trex", "aida")]
    assert plan.skipped == {"trex": "no tasks/trex/test.jsonl", "aida": "no tasks/aida/test.jsonl"}
    assert plan.train == ["nq", "hotpotqa"]
    assert plan.mine == [("nq", "train"), ("nq", "dev"), ("hotpotqa", "train"), ("hotpotqa", "dev")]
    assert plan.build_free == ["rc", "denoise", "nextsent"]


@pytest.mark.parametrize("backbone", ["tiny", "smollm2"])
def test_training_reads_the_folder_and_the_built_retrieval_free_tasks(world, tmp_path, backbone):
    d = demo(world, tmp_path, backbone)
    cfg = d.train_config(tmp_path / "backbone").validate()
    out = tmp_path / "out"
    assert cfg.data.passages == str(world / "passages.jsonl")
    assert [s.path for s in cfg.data.retrieval] == [
        str(out / "mined" / "nq-train.jsonl"),
        str(out / "mined" / "hotpotqa-train.jsonl"),
    ]
    free = ("rc", "denoise", "nextsent", "verify") if backbone == "tiny" else ("verify",)
    assert [(s.task, s.path, s.read_provenance) for s in cfg.data.retrieval_free] == [
        (t, str(out / "free" / t / "train.jsonl"), t == "verify") for t in free
    ]
    assert cfg.eval.dev == str(out / "mined" / "nq-dev.jsonl")
    assert cfg.out == str(out / "train")


def test_world_step_is_skipped_and_the_folder_is_never_written(world, tmp_path):
    before = snapshot(world)
    d = demo(world, tmp_path)
    d.make_worlds()
    d.make_free_tasks()
    assert snapshot(world) == before
    out = tmp_path / "out"
    assert not (out / "world").exists()
    nq_train = load_examples(world / "tasks" / "nq" / "train.jsonl", "nq")
    for task in ("rc", "denoise", "nextsent", "verify"):
        examples = load_examples(out / "free" / task / "train.jsonl", task, require_answers=True)
        assert len(examples) > 10, task
        if task == "rc":  # one per training question with a gold passage, whose answer it holds
            assert len(examples) == len(nq_train)
            assert all(e.answers[0] in e.prompt for e in examples)


def test_retrieval_free_tasks_the_folder_has_are_used_as_they_are(world, generated, tmp_path):
    shutil.copytree(generated / "tasks" / "denoise", world / "tasks" / "denoise")
    d = demo(world, tmp_path)
    assert d.plan.build_free == ["rc", "nextsent"]
    paths = {s.task: s.path for s in d.train_config(tmp_path / "backbone").data.retrieval_free}
    assert paths["denoise"] == str(world / "tasks" / "denoise" / "train.jsonl")
    assert paths["rc"] == str(tmp_path / "out" / "free" / "rc" / "train.jsonl")


def test_nq_alone_is_enough(world, tmp_path):
    """Only passages + nq train/dev/test: trained on nq alone, the other seven formats named as skipped."""
    for d in (world / "tasks").iterdir():
        if d.name != "nq":
            shutil.rmtree(d)
    dm = demo(world, tmp_path)
    plan = dm.plan
    assert (plan.train, plan.mine, plan.evaluate) == (["nq"], [("nq", "train"), ("nq", "dev")], ["nq"])
    assert list(plan.skipped) == [t for t in EVAL_TASKS if t != "nq"]
    cfg = dm.train_config(tmp_path / "backbone").validate()
    assert [s.path for s in cfg.data.retrieval] == [str(tmp_path / "out" / "mined" / "nq-train.jsonl")]


def test_unknown_task_folders_and_empty_test_files_are_named(world, tmp_path):
    (world / "tasks" / "mytask").mkdir()
    (world / "tasks" / "mytask" / "test.jsonl").write_text("{}\n")
    (world / "tasks" / "zsre" / "test.jsonl").write_text("")
    plan = inspect_world(world)
    assert "zsre" not in plan.evaluate and plan.skipped["zsre"] == "tasks/zsre/test.jsonl is empty"
    assert "not a task name imprag knows" in plan.skipped["mytask"]


def test_the_generated_world_plan_is_unchanged(tmp_path):
    """Without --world: nothing is read at planning time, every format is evaluated, only the true/false
    statements are built (from the passages, never from the world's FEVER files)."""
    d = Demo(DemoConfig(out=tmp_path / "out", size="tiny", backbone="tiny"))
    assert d.world == tmp_path / "out" / "world"
    assert (d.plan.evaluate, d.plan.skipped, d.plan.build_free) == (list(EVAL_TASKS), {}, [])
    assert d.plan.train == ["nq", "hotpotqa"] and d.built_free == ["verify"]
    free = [s.path for s in d.train_config(tmp_path / "backbone").data.retrieval_free]
    assert free == [
        str(tmp_path / "out" / "world" / "tasks" / t / "train.jsonl") for t in ("rc", "denoise", "nextsent")
    ] + [str(tmp_path / "out" / "free" / "verify" / "train.jsonl")]


# ---------------------------------------------------------------- one clear line for an unfit folder


def run_demo(capsys, world: Path, out: Path) -> list[str]:
    assert main(["demo", "--world", str(world), "--out", str(out), "--size", "tiny"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("imprag demo: error: "), err
    assert not out.exists(), "nothing is written before the folder is checked"
    return err


def test_missing_nq_train_is_named_with_the_fix(world, tmp_path, capsys):
    (world / "tasks" / "nq" / "train.jsonl").unlink()
    [line] = run_demo(capsys, world, tmp_path / "out")
    assert f"--world {world}: missing tasks/nq/train.jsonl" in line
    assert "gold provenance" in line and '"passage_id"' in line


def test_missing_nq_dev_is_named(world, tmp_path, capsys):
    shutil.rmtree(world / "tasks" / "nq")
    (world / "tasks" / "nq").mkdir()
    (world / "tasks" / "nq" / "train.jsonl").write_text("")
    [line] = run_demo(capsys, world, tmp_path / "out")
    assert "missing tasks/nq/dev.jsonl" in line


def test_questions_without_gold_provenance_are_refused(world, tmp_path, capsys):
    path = world / "tasks" / "nq" / "dev.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r["output"] = [o for o in r["output"] if "provenance" not in o]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [line] = run_demo(capsys, world, tmp_path / "out")
    assert f"{path}: no example names a passage of" in line and "passage_id" in line


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda w: shutil.rmtree(w), "not a folder"),
        (lambda w: (w / "passages.jsonl").unlink(), "no passages.jsonl"),
        (lambda w: (w / "passages.jsonl").write_text('{"id": "a", "text": "x"}\nnot json\n'), "passages.jsonl:2:"),
        (lambda w: (w / "tasks" / "nq" / "dev.jsonl").write_text('{"id": 1, "input": "q?"}\n[1]\n'), "dev.jsonl:"),
        (lambda w: (w / "tasks" / "nq" / "train.jsonl").write_text("\n"), "train.jsonl: no examples; add nq questions"),
        (lambda w: [(d / "test.jsonl").unlink() for d in (w / "tasks").iterdir() if (d / "test.jsonl").exists()],
         "no tasks/<task>/test.jsonl to evaluate"),
    ],
    ids=["no-folder", "no-passages", "bad-passage-line", "bad-task-line", "empty-nq-train", "no-test-files"],
)  # fmt: skip
def test_a_malformed_folder_is_one_line(world, tmp_path, capsys, damage, expected):
    damage(world)
    [line] = run_demo(capsys, world, tmp_path / "out")
    assert expected in line


def test_out_inside_the_world_folder_is_refused(world, capsys):
    before = snapshot(world)
    assert main(["demo", "--world", str(world), "--out", str(world / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is inside --world" in err[0] and "outside it" in err[0]
    assert snapshot(world) == before
