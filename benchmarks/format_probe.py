"""Why implicit queries do not transfer to the unseen formats in the demo: does the learned query read the
entity, or only the last few tokens before `A:`? Gold-passage recall@5 of one trained demo model for the
same test examples worded in different ways (the task's own template, without its instruction, as a
question), and for seen-format questions with an unseen format's instruction appended.

    python benchmarks/format_probe.py runs/demo            # any `imprag demo --out` folder (tiny backbone)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from imprag.data.tasks import FEVER_TEMPLATE, QA_TEMPLATE, SLOT_TEMPLATE
from imprag.index.faiss_index import Index
from imprag.model.imprag import ImpRAG

SLOT_INSTRUCTION = SLOT_TEMPLATE.split("[SEP] {relation} ", 1)[1]  # "Provide the answer ... A:"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="an `imprag demo --out` folder with train/final and index/")
    ap.add_argument("--limit", type=int, default=100, help="test examples per task")
    args = ap.parse_args()
    model = ImpRAG.from_pretrained(args.run / "train" / "final")
    index = Index.load(args.run / "index", model=model)

    def rows(task: str) -> list[dict]:
        with (args.run / "world" / "tasks" / task / "test.jsonl").open() as f:
            return [json.loads(line) for line in f][: args.limit]

    def recall(prompts: list[str], examples: list[dict], k: int = 5) -> float:
        gold = [{p["passage_id"] for o in e["output"] for p in o.get("provenance", [])} for e in examples]
        got = index.retrieve(model, prompts, k=k)
        return sum(bool(g & {str(p["id"]) for p in r}) for g, r in zip(gold, got)) / len(gold)

    trex, fever, nq = rows("trex"), rows("fever"), rows("nq")
    pairs = [e["input"].split(" [SEP] ") for e in trex]
    probes = {
        "T-REx, its template": (
            [SLOT_TEMPLATE.format(entity=s, relation=r) for s, r in pairs],
            trex,
        ),
        "T-REx, without the instruction": ([f"{s} [SEP] {r} A:" for s, r in pairs], trex),
        "T-REx, as a question": ([f"Q: What is the {r} of {s}? A:" for s, r in pairs], trex),
        "FEVER, its template": ([FEVER_TEMPLATE.format(statement=e["input"]) for e in fever], fever),
        "FEVER, as a question": ([f"Q: {e['input'].rstrip('.')}? A:" for e in fever], fever),
        "NQ, its template (trained)": ([QA_TEMPLATE.format(question=e["input"]) for e in nq], nq),
        "NQ + T-REx's instruction": ([f"{e['input']} {SLOT_INSTRUCTION}" for e in nq], nq),
    }
    print(f"| prompts ({args.limit} test examples each) | gold-passage recall@5 |\n|---|---:|")
    for name, (prompts, examples) in probes.items():
        print(f"| {name} | {recall(prompts, examples):.2f} |")


if __name__ == "__main__":
    main()
