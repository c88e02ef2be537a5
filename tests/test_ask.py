"""`imprag ask`: prints the library's own answer and the passages the implicit query retrieved."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imprag import rag
from imprag.cli import main
from imprag.index.faiss_index import Index
from imprag.model.imprag import ImpRAG
from imprag.model.tiny import save_tiny

PROMPT = "Q: which river flows through the capital? A:"


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_dir, tiny_index):
    tmp = tmp_path_factory.mktemp("ask")
    index = tiny_index
    model = ImpRAG.from_pretrained(tiny_model_dir)
    return {
        "dir": tiny_model_dir,
        "index": index,
        "model": model,
        "loaded": Index.load(index, model=model),
        "tmp": tmp,
    }


def ask(built, *extra: str) -> list[str]:
    return ["ask", PROMPT, "--model", str(built["dir"]), "--index", str(built["index"]), *extra]


def test_prints_answer_then_ranked_passages(built, capsys):
    assert main(ask(built, "-k", "4", "--max-tokens", "6")) == 0
    stdout = capsys.readouterr().out
    want = rag.answer(built["model"], built["loaded"], [PROMPT], k=4, max_new_tokens=6)[0]
    assert stdout.startswith(want.text + "\n")
    out = stdout.splitlines()
    header = next(i for i, line in enumerate(out) if line.split()[:2] == ["rank", "score"])
    rows = [line.split() for line in out[header + 1 :]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert [r[2] for r in rows] == [p["id"] for p in want.passages]
    assert [" ".join(r[3:]) for r in rows] == [p["title"] for p in want.passages]
    np.testing.assert_allclose([float(r[1]) for r in rows], [p["score"] for p in want.passages], atol=1e-4)


def test_json_with_passage_text(built, capsys):
    assert main(ask(built, "-k", "2", "--max-tokens", "5", "--json", "--show-passages")) == 0
    rec = json.loads(capsys.readouterr().out)
    want = rag.answer(built["model"], built["loaded"], [PROMPT], k=2, max_new_tokens=5)[0]
    assert rec["answer"] == want.text and rec["prompt"] == PROMPT
    assert rec["finish_reason"] == want.generation.finish_reason
    assert rec["completion_tokens"] == len(want.generation.token_ids)
    assert [(p["rank"], p["id"], p["title"], p["text"]) for p in rec["passages"]] == [
        (i + 1, p["id"], p["title"], p["text"]) for i, p in enumerate(want.passages)
    ]


def test_show_passages_prints_text_and_template_wraps_prompt(built, capsys):
    assert main(["ask", "which river?", "--model", str(built["dir"]), "--index", str(built["index"]), "-k", "1",
                 "--max-tokens", "3", "--template", "Q: {prompt} A:", "--show-passages", "--json"]) == 0  # fmt: skip
    rec = json.loads(capsys.readouterr().out)
    assert rec["prompt"] == "Q: which river? A:"
    assert main(ask(built, "-k", "1", "--max-tokens", "3", "--show-passages")) == 0
    out = capsys.readouterr().out
    hit = built["loaded"].retrieve(built["model"], [PROMPT], k=1)[0][0]
    assert " ".join(hit["text"].split()[:3]) in " ".join(out.split())


def test_closed_book_and_several_prompts(built, capsys):
    assert main(ask(built, "-k", "0", "--max-tokens", "4", "--json")) == 0
    rec = json.loads(capsys.readouterr().out)
    assert (
        rec["passages"] == []
        and rec["answer"] == built["model"].generate([PROMPT], None, max_new_tokens=4)[0].text.strip()
    )
    args = [
        "ask",
        PROMPT,
        "Q: who wrote the book? A:",
        "--model",
        str(built["dir"]),
        "--index",
        str(built["index"]),
    ]
    assert main([*args, "-k", "2", "--max-tokens", "3", "--json"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["-k", "11"], "-k 11"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--template", "no placeholder"], "--template"),
        (["--temperature", "-1"], "--temperature"),
    ],
)
def test_bad_flags_are_one_line(built, capsys, flags, needle):
    assert main(ask(built, *flags)) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("imprag ask")]
    assert len(err) == 1 and needle in err[0]


def test_index_of_another_model_is_refused(built, capsys):
    other = save_tiny(built["tmp"] / "other", seed=5)
    assert main(["ask", PROMPT, "--model", str(other), "--index", str(built["index"])]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("imprag ask")]
    assert len(err) == 1 and "fingerprint" in err[0]
