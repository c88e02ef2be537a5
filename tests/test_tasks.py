"""Task registry, templates, input conversions, and the KILT / plain JSONL reader and prediction writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imprag.data.example import Provenance
from imprag.data.kilt import load_examples, write_predictions
from imprag.data.tasks import (
    EVAL_TASKS,
    TASKS,
    apply_template,
    get_task,
    input_fields,
    task_for_file,
    truncate_around_mention,
)
from imprag.errors import UserError

SLOT_INSTR = "Provide the answer corresponding to the relation specified after [SEP] for the entity mentioned before [SEP] A:"
AIDA_INSTR = (
    "Output the Wikipedia page title of the entity mentioned between [START] and [END] in the given text A:"
)

# the DESIGN.md section 1 table, verbatim
TEMPLATE_CASES = [
    ("nq", "who wrote hamlet", "Q: who wrote hamlet A:"),
    ("hotpotqa", "Were X and Y both born in Z?", "Q: Were X and Y both born in Z? A:"),
    ("simpleqa", "When?", "Q: When? A:"),
    ("2wikimultihopqa", "Who?", "Q: Who? A:"),
    ("2wiki", "Who?", "Q: Who? A:"),
    ("triviaqa", "Which?", "Q: Which? A:"),
    ("trex", "Serge Blisko [SEP] occupation", f"Serge Blisko [SEP] occupation {SLOT_INSTR}"),
    (
        "zsre",
        "USA-88 [SEP] time of spacecraft launch",
        f"USA-88 [SEP] time of spacecraft launch {SLOT_INSTR}",
    ),
    ("structured_zeroshot", "A [SEP] b", f"A [SEP] b {SLOT_INSTR}"),
    ("fever", "Kate Hudson is an actress.", "Is this statement true? Kate Hudson is an actress. A:"),
    (
        "aida",
        "EU rejects [START_ENT] German [END_ENT] call .",
        f"EU rejects [START] German [END] call . {AIDA_INSTR}",
    ),
    ("aidayago2", "[START_ENT] X [END_ENT]", f"[START] X [END] {AIDA_INSTR}"),
    ("rc", {"context": "Tom is 5.", "question": "How old is Tom?"}, "Tom is 5. Q: How old is Tom? A:"),
    ("summarization", "A long article.", "A long article. Summarize this article:"),
]


@pytest.mark.parametrize("task,raw,prompt", TEMPLATE_CASES)
def test_templates_match_design_table(task, raw, prompt):
    assert apply_template(task, raw) == prompt


def test_registry_covers_the_eight_tasks_and_training_tasks():
    for name in EVAL_TASKS:
        assert TASKS[name].needs_retrieval
    for name in ("rc", "summarization", "denoise", "nextsent", "lm"):
        assert not TASKS[name].needs_retrieval
    assert {TASKS[n].group for n in ("nq", "hotpotqa", "simpleqa", "2wikimultihopqa")} == {"seen"}
    assert {TASKS[n].group for n in ("trex", "zsre", "fever", "aida")} == {"unseen"}
    assert get_task("2wiki").name == "2wikimultihopqa"
    assert get_task("STRUCTURED_ZEROSHOT").name == "zsre"
    assert get_task("aidayago2").name == "aida"
    assert apply_template("nq", "what is {x} in {0}?") == "Q: what is {x} in {0}? A:"  # braces stay literal
    for name in ("denoise", "nextsent", "prevsent", "lm"):
        assert apply_template(name, "Some text.").startswith("Some text.")


def test_unknown_task_lists_known_tasks():
    with pytest.raises(UserError, match="unknown task 'squad'.*nq.*zsre.*aida"):
        get_task("squad")
    with pytest.raises(UserError, match="unknown task"):
        load_examples("nowhere.jsonl", "squad")


def test_fever_answer_mapping_both_ways():
    fever = get_task("fever")
    assert fever.to_model_answer("SUPPORTS") == "True"
    assert fever.to_model_answer("REFUTES") == "False"
    assert fever.to_kilt_answer("true") == "SUPPORTS"
    assert fever.to_kilt_answer("False") == "REFUTES"
    assert get_task("nq").to_model_answer("SUPPORTS") == "SUPPORTS"


def test_verify_shares_fevers_format_and_answers():
    from imprag.eval.metrics import score_example
    from imprag.model.calibration import template_key

    verify, fever = get_task("verify"), get_task("fever")
    assert (verify.kind, verify.template, verify.group) == ("fever", fever.template, "train")
    assert not verify.needs_retrieval
    for gold, model in (("SUPPORTS", "True"), ("REFUTES", "False"), ("True", "True"), ("False", "False")):
        assert verify.to_model_answer(gold) == fever.to_model_answer(gold) == model
    assert verify.to_kilt_answer("True") == "SUPPORTS"
    prompt = apply_template("verify", "Kate Hudson is an actress.")
    assert prompt == apply_template("fever", "Kate Hudson is an actress.")
    assert template_key(prompt) == "fever"  # one calibration mean for both
    assert task_for_file("verify-train.jsonl") == task_for_file("tasks/verify/train.jsonl") == "verify"
    assert score_example(verify.kind, "true", ["True"])["em"] == 1.0


@pytest.mark.parametrize(
    "path,task",
    [
        ("kilt/structured_zeroshot-dev-kilt.jsonl", "zsre"),
        ("nq-dev-kilt.jsonl", "nq"),
        ("aidayago2-test_without_answers-kilt.jsonl", "aida"),
        ("triviaqa-dev_id-kilt.jsonl", "triviaqa"),
        ("trex-train-kilt.jsonl", "trex"),
        ("fever-dev-kilt.jsonl", "fever"),
        ("hotpotqa-dev-kilt.jsonl", "hotpotqa"),
        ("2wikimultihopqa_dev.jsonl", "2wikimultihopqa"),
        ("data/nq/dev.jsonl", "nq"),
        ("data/hotpotqa/dev.jsonl", "hotpotqa"),
        ("wned-dev-kilt.jsonl", "wned"),
        ("data/misc/eli5-dev-kilt.jsonl", None),
        ("notes.jsonl", None),
    ],
)
def test_task_for_file(path, task):
    assert task_for_file(path) == task


def test_slot_input_needs_sep():
    assert input_fields("trex", "Najafgarh [SEP] country") == {"entity": "Najafgarh", "relation": "country"}
    with pytest.raises(UserError, match=r"entity \[SEP\] relation"):
        apply_template("zsre", "no separator here")
    with pytest.raises(UserError, match="context, question"):
        apply_template("rc", "just a string")


def _doc(n_words: int, mention_at: int) -> str:
    words = [f"w{i}" for i in range(n_words)]
    words[mention_at] = "[START_ENT] Mention Here [END_ENT]"
    return " ".join(words)


@pytest.mark.parametrize("mention_at", [0, 5, 250, 495, 499])
def test_aida_context_is_cut_around_the_mention(mention_at):
    prompt = apply_template("aida", _doc(500, mention_at), max_context_words=40)
    assert prompt.endswith(AIDA_INSTR)
    context = prompt[: -len(AIDA_INSTR)].strip()
    assert "[START] Mention Here [END]" in context
    assert len(context.split()) == 40
    # the window is contiguous text of the original document
    assert context in _doc(500, mention_at).replace("[START_ENT]", "[START]").replace("[END_ENT]", "[END]")
    if 20 < mention_at < 480:  # centred when there is room on both sides
        left = context.split("[START]")[0].split()
        right = context.split("[END]")[1].split()
        assert abs(len(left) - len(right)) <= 1


def test_truncation_budgets():
    short = "a [START] b [END] c"
    assert truncate_around_mention(short, 10) == short
    assert truncate_around_mention(short, None) == short
    assert truncate_around_mention("x " * 10 + "[START] m [END]" + " y" * 10, 3) == "[START] m [END]"
    chars = truncate_around_mention("x" * 100 + " [START] m [END] " + "y" * 100, None, max_chars=41)
    assert len(chars) == 41 and "[START] m [END]" in chars
    assert truncate_around_mention("no markers at all here", 2) == "no markers"
    # the spec's default budget applies to real AIDA documents (~440 words)
    assert get_task("aida").max_context_words is not None


# ---- the reader ---------------------------------------------------------------------------------------

SAMPLE_TASKS = {
    "nq": "nq",
    "hotpotqa": "hotpotqa",
    "triviaqa": "triviaqa",
    "trex": "trex",
    "structured_zeroshot": "zsre",
    "fever": "fever",
    "aidayago2": "aida",
}


def _sample_files(shared_data: Path) -> list[tuple[Path, str]]:
    out = []
    for prefix, task in SAMPLE_TASKS.items():
        files = sorted((shared_data / "kilt_samples").glob(f"{prefix}-*-kilt.jsonl"))
        assert len(files) == 3, files
        out += [(f, task) for f in files]
    return out


def test_every_kilt_sample_file_loads(shared_data):
    for path, task in _sample_files(shared_data):
        assert task_for_file(path) == task
        examples = load_examples(path, task)
        raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert [e.id for e in examples] == [str(r["id"]) for r in raw]
        for e, r in zip(examples, raw):
            assert e.task == task and e.source.endswith(f":{raw.index(r) + 1}")
            assert "[START_ENT]" not in e.prompt and "[END_ENT]" not in e.prompt
            if "without_answers" in path.name:
                assert e.answers == [] and e.provenance == []
                continue
            kilt_answers = [o["answer"] for o in r["output"] if "answer" in o]
            assert e.answers, path
            if task == "fever":
                assert set(e.answers) <= {"True", "False"}
                assert e.answers == [{"SUPPORTS": "True", "REFUTES": "False"}[kilt_answers[0]]]
            elif task == "aida":
                titles = [p["title"] for o in r["output"] for p in o.get("provenance", [])]
                assert set(titles) <= set(e.answers)
                assert AIDA_INSTR in e.prompt and "[START]" in e.prompt
                assert len(e.prompt.split()) < len(r["input"].split())  # cut around the mention
            else:
                assert e.answers == list(dict.fromkeys(kilt_answers))  # every entry's answer, in order
            wiki_ids = {str(p["wikipedia_id"]) for o in r["output"] for p in o.get("provenance", [])}
            assert {p.wikipedia_id for p in e.provenance} == wiki_ids


def test_without_answers_files_refuse_require_answers(shared_data):
    for path in sorted((shared_data / "kilt_samples").glob("*without_answers-kilt.jsonl")):
        task = task_for_file(path)
        if task is None:
            continue
        with pytest.raises(UserError, match=rf"{path.name}:1: example .* has no gold answers"):
            load_examples(path, task, require_answers=True)


def test_nq_and_hotpotqa_load_with_passage_ids(shared_data):
    nq = load_examples(shared_data / "nq" / "dev.jsonl", "nq", require_answers=True)
    assert len(nq) == 500
    assert all(
        e.provenance and all(p.passage_id and p.passage_id.startswith("w") for p in e.provenance) for e in nq
    )
    assert nq[0].prompt == f"Q: {nq[0].input} A:"
    hp = load_examples(shared_data / "hotpotqa" / "dev.jsonl", "hotpotqa", require_answers=True)
    assert len(hp) == 100
    assert all(len(e.provenance) >= 2 for e in hp)  # multi-hop: the supporting paragraphs
    ids = {json.loads(line)["id"] for line in (shared_data / "wiki" / "passages.jsonl").open()}
    assert {p.passage_id for e in nq + hp for p in e.provenance} <= ids
    assert len(load_examples(shared_data / "nq" / "train.jsonl", "nq", limit=7)) == 7


def _write(tmp_path: Path, lines: list[str], name: str = "t.jsonl") -> Path:
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_plain_and_kilt_lines_mix_in_one_file(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"question": "who?", "answers": ["Ann", "Anne"]}),
            json.dumps({"input": "where?", "answers": "Rome", "id": 7}),
            json.dumps(
                {
                    "id": "k",
                    "input": "when?",
                    "output": [{"answer": "1999"}, {"provenance": [{"passage_id": "w1"}]}],
                }
            ),
            "",
            json.dumps({"id": "t", "input": "what?"}),
        ],
    )
    ex = load_examples(p, "nq")
    assert [e.id for e in ex] == ["t-1", "7", "k", "t"]
    assert [e.answers for e in ex] == [["Ann", "Anne"], ["Rome"], ["1999"], []]
    assert ex[2].provenance == [Provenance(passage_id="w1")]
    assert [e.prompt for e in ex] == ["Q: who? A:", "Q: where? A:", "Q: when? A:", "Q: what? A:"]
    with pytest.raises(UserError, match=r"t\.jsonl:5: example t has no gold answers"):
        load_examples(p, "nq", require_answers=True)


def test_rc_fields_from_plain_lines(tmp_path):
    p = _write(tmp_path, [json.dumps({"context": "Tom is 5.", "question": "Age?", "answers": ["5"]})])
    (e,) = load_examples(p, "rc")
    assert e.prompt == "Tom is 5. Q: Age? A:" and e.answers == ["5"]


@pytest.mark.parametrize(
    "line,message",
    [
        ('{"id": 1, "input": "q", "output": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"id": 1, "input": "q", "output": "Paris"}', "`output` must be a list"),
        ('{"id": 1, "input": "q", "output": ["Paris"]}', "each `output` entry must be a JSON object"),
        ('{"id": 1, "input": "q", "output": [{"answer": ["Paris"]}]}', "an answer must be a string"),
        ('{"id": 1, "input": "q", "output": [{"provenance": "w1"}]}', "`provenance` must be a list"),
        ('{"id": 1, "input": 5, "output": []}', "the input must be a string"),
        ('{"id": 1, "answers": ["x"]}', "no input"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"id": "0", "input": "ok", "output": [{"answer": "yes"}]})
    p = _write(tmp_path, [good, good.replace('"0"', '"9"'), line], name="bad.jsonl")
    with pytest.raises(UserError, match=rf"bad\.jsonl:3: .*{message}"):
        load_examples(p, "nq")
    assert [e.id for e in load_examples(p, "nq", on_error="skip")] == ["0", "9"]


def test_bad_slot_line_and_missing_file(tmp_path):
    p = _write(
        tmp_path, [json.dumps({"id": "a", "input": "no sep", "output": [{"answer": "x"}]})], name="z.jsonl"
    )
    with pytest.raises(UserError, match=r"z\.jsonl:1: .*\[SEP\]"):
        load_examples(p, "zsre")
    with pytest.raises(UserError, match="file not found"):
        load_examples(tmp_path / "missing.jsonl", "nq")
    with pytest.raises(UserError, match="on_error"):
        load_examples(p, "zsre", on_error="ignore")


def test_write_predictions_kilt_format(tmp_path):
    out = tmp_path / "sub" / "pred.jsonl"
    rows = [
        {
            "id": "1",
            "input": "Kate Hudson is an actress.",
            "answer": "True",
            "provenance": [
                Provenance(passage_id="w1", title="Kate Hudson"),
                {"id": "w2", "title": "B", "text": "ignored", "score": 3},
                {"passage_id": "w3", "title": "C", "wikipedia_id": 42},
            ],
        },
        {"id": 2, "answer": "False"},
    ]
    write_predictions(out, rows, task="fever")
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert got[0] == {
        "id": "1",
        "input": "Kate Hudson is an actress.",
        "output": [
            {
                "answer": "SUPPORTS",
                "provenance": [
                    {"passage_id": "w1", "title": "Kate Hudson"},
                    {"passage_id": "w2", "title": "B", "score": 3.0},
                    {"passage_id": "w3", "title": "C", "wikipedia_id": "42"},
                ],
            }
        ],
    }
    assert got[1] == {"id": "2", "output": [{"answer": "REFUTES", "provenance": []}]}
    assert [p.name for p in out.parent.iterdir()] == ["pred.jsonl"]  # no temp file left behind
    write_predictions(out, [{"id": "1", "answer": "True"}])  # no task: answer kept as is
    assert json.loads(out.read_text())["output"][0]["answer"] == "True"
