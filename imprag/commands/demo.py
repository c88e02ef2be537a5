"""`imprag demo`: world -> backbone -> mine -> train -> index -> eval -> report, resumable; `--world DIR`
runs the same on a folder in the world layout (imprag.demo.layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imprag.config_io import option, same_named
from imprag.demo.pipeline import SIZES, Demo, DemoConfig


@dataclass(kw_only=True)
class Options:
    out: Path = option(Path("runs/demo"), "working folder; re-running reuses finished steps")
    size: str = option("small", f"one of {', '.join(SIZES)} (small: ~10 min on 2 cores)")
    backbone: str = option(
        "smollm2",
        "smollm2 (real SmolLM2-135M-Instruct weights, converted once per machine) or tiny (a random Llama "
        "trained from scratch: the fast smoke test)",
    )
    world: Path | None = option(
        None,
        "run on this folder instead of a generated world: passages.jsonl + tasks/<task>/{train,dev,test}.jsonl "
        "(KILT; tasks/nq/train and dev with gold provenance required); read only, outputs go under --out",
        metavar="DIR",
    )
    seed: int = option(0, "random seed")
    eval_questions: int | None = option(
        None,
        "test questions for every format (default: the size's; small: 32 for NQ, HotpotQA and SimpleQA, 16 "
        "for T-REx, zsRE and FEVER, 8 for 2Wiki and AIDA). A 16-question cell has a standard error of about 12 "
        "EM points; each question more costs about 0.5 s per method on 2 cores",
        metavar="N",
    )
    train_minutes: float | None = option(
        None, "stop training after this many minutes and go on with the model as it stands"
    )


def run(args: Options) -> int:
    summary = Demo(same_named(DemoConfig, args)).run()
    print(Path(summary["report"]).read_text())
    print(f"chart: {summary['chart']}\n")
    if summary["skipped"]:
        print("not evaluated: " + "; ".join(f"{t} ({why})" for t, why in summary["skipped"].items()) + "\n")
    for ex in summary["examples"]:
        print(f"{ex['prompt']}\n  model answered: {ex['answer']!r}   gold: {ex['gold']}")
        for rank, p in enumerate(ex["passages"], 1):
            mark = "*" if p["id"] in ex["gold_passages"] else " "
            print(f"  {mark}{rank}. [{p['score']:7.2f}] {p['title']}")
    print(f"\n(* = gold passage)  total {summary['seconds']:.0f} s; per step: {summary['step_seconds']}")
    return 0
