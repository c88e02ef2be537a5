"""The task registry: each task's prompt template, answer mapping and KILT file names (one entry per task).

Evaluation templates follow DESIGN.md section 1 (the paper's Table 2 tasks). The retrieval-free
training tasks (reading comprehension, summarization, phrase denoising, next/previous sentence, plain
text) train `J_gen` only; denoising and next/previous-sentence templates are this project's wording
(the paper names the tasks but not their prompts). `verify` (true/false statements built from passages)
shares FEVER's template and answers, so it teaches that unseen format without FEVER data.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from imprag.errors import UserError

log = logging.getLogger(__name__)

QA_TEMPLATE = "Q: {question} A:"
SLOT_TEMPLATE = (
    "{entity} [SEP] {relation} Provide the answer corresponding to the relation specified after [SEP] "
    "for the entity mentioned before [SEP] A:"
)
FEVER_TEMPLATE = "Is this statement true? {statement} A:"
AIDA_TEMPLATE = (
    "{context} Output the Wikipedia page title of the entity mentioned between [START] and [END] "
    "in the given text A:"
)
RC_TEMPLATE = "{context} Q: {question} A:"
SUMMARIZATION_TEMPLATE = "{context} Summarize this article:"
DENOISE_TEMPLATE = "{context} Rewrite this text with the masked phrases filled in:"
NEXTSENT_TEMPLATE = "{context} Write the sentence that follows this text:"
PREVSENT_TEMPLATE = "{context} Write the sentence that comes before this text:"
LM_TEMPLATE = "{text}"

# KILT marks the mention with these; our prompts (and the paper's AIDA template) say [START]/[END].
KILT_MENTION_MARKERS = {"[START_ENT]": "[START]", "[END_ENT]": "[END]"}
START, END = "[START]", "[END]"
SEP = "[SEP]"

# Default context budget for entity linking: AIDA documents run to ~450 words; the window around the
# mention keeps the instruction (which comes after the context) inside any reasonable context length.
DEFAULT_EL_CONTEXT_WORDS = 256

KINDS = ("qa", "slot", "fever", "aida", "rc", "summarization", "denoise", "nextsent", "lm")


@dataclass(frozen=True)
class TaskSpec:
    """One task: how its raw input becomes a prompt and how its gold answers read to the model."""

    name: str
    kind: str  # one of KINDS: decides input parsing and which metrics apply
    template: str  # str.format template over named fields (see `fields`)
    needs_retrieval: bool  # knowledge-intensive (retrieval losses + retrieval at eval) or J_gen only
    kilt_aliases: tuple[str, ...] = ()  # KILT file-name prefixes / other spellings of the name
    # gold answer (as in the file) -> answer the model is taught to say; matched case-insensitively
    answer_map: dict[str, str] = field(default_factory=dict, hash=False)
    group: str = "train"  # "seen" | "unseen" (paper Table 2 columns) | "train" (retrieval-free training)
    max_context_words: int | None = None  # entity linking: word budget around the mention
    description: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f, _, _ in string.Formatter().parse(self.template) if f)

    def to_model_answer(self, gold: str) -> str:
        """SUPPORTS -> True for FEVER; identity elsewhere."""
        for k, v in self.answer_map.items():
            if gold.strip().lower() == k.lower():
                return v
        return gold

    def to_kilt_answer(self, answer: str) -> str:
        """Inverse of `to_model_answer` (True -> SUPPORTS), for official-format prediction files."""
        for k, v in self.answer_map.items():
            if answer.strip().lower() == v.lower():
                return k
        return answer


def _qa(name: str, aliases: tuple[str, ...], group: str, desc: str) -> TaskSpec:
    return TaskSpec(name, "qa", QA_TEMPLATE, True, aliases, group=group, description=desc)


_FEVER_MAP = {"SUPPORTS": "True", "REFUTES": "False"}

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _qa("nq", ("nq", "naturalquestions", "natural_questions"), "seen", "Natural Questions (open)"),
        _qa("hotpotqa", ("hotpotqa", "hotpot"), "seen", "HotpotQA multi-hop QA"),
        _qa("simpleqa", ("simpleqa",), "seen", "SimpleQA short factual questions"),
        _qa("2wikimultihopqa", ("2wikimultihopqa", "2wiki", "2wikimqa"), "seen", "2WikiMultiHopQA"),
        _qa("triviaqa", ("triviaqa", "trivia_qa", "tqa"), "seen", "TriviaQA (KILT files carry ids only)"),
        TaskSpec(
            "trex",
            "slot",
            SLOT_TEMPLATE,
            True,
            ("trex", "t-rex"),
            group="unseen",
            description="T-REx slot filling",
        ),
        TaskSpec(
            "zsre",
            "slot",
            SLOT_TEMPLATE,
            True,
            ("zsre", "structured_zeroshot", "zero_shot_re"),
            group="unseen",
            description="zero-shot relation extraction (KILT structured_zeroshot)",
        ),
        TaskSpec(
            "fever",
            "fever",
            FEVER_TEMPLATE,
            True,
            ("fever",),
            answer_map=_FEVER_MAP,
            group="unseen",
            description="FEVER fact verification (SUPPORTS/REFUTES as True/False)",
        ),
        TaskSpec(
            "aida",
            "aida",
            AIDA_TEMPLATE,
            True,
            ("aida", "aidayago2", "aida-yago2"),
            group="unseen",
            max_context_words=DEFAULT_EL_CONTEXT_WORDS,
            description="AIDA CoNLL-YAGO entity linking (answer = Wikipedia page title)",
        ),
        TaskSpec(
            "wned",
            "aida",
            AIDA_TEMPLATE,
            True,
            ("wned", "wned-wiki"),
            group="unseen",
            max_context_words=DEFAULT_EL_CONTEXT_WORDS,
            description="WNED-WIKI entity linking (KILT)",
        ),
        TaskSpec(
            "cweb",
            "aida",
            AIDA_TEMPLATE,
            True,
            ("cweb", "wned-cweb"),
            group="unseen",
            max_context_words=DEFAULT_EL_CONTEXT_WORDS,
            description="WNED-CWEB entity linking (KILT)",
        ),
        TaskSpec(
            "rc",
            "rc",
            RC_TEMPLATE,
            False,
            ("rc", "reading_comprehension"),
            description="reading comprehension",
        ),
        TaskSpec(
            "summarization", "summarization", SUMMARIZATION_TEMPLATE, False, ("summarization", "summarize")
        ),
        TaskSpec(
            "denoise",
            "denoise",
            DENOISE_TEMPLATE,
            False,
            ("denoise", "phrase_denoising"),
            description="phrase denoising",
        ),
        TaskSpec(
            "nextsent",
            "nextsent",
            NEXTSENT_TEMPLATE,
            False,
            ("nextsent", "next_sentence"),
            description="next sentence",
        ),
        TaskSpec(
            "prevsent",
            "nextsent",
            PREVSENT_TEMPLATE,
            False,
            ("prevsent", "previous_sentence"),
            description="previous sentence",
        ),
        TaskSpec(
            "verify",
            "fever",
            FEVER_TEMPLATE,
            False,
            ("verify",),
            answer_map=_FEVER_MAP,
            description="true/false statements built from passages (teaches FEVER's answer format)",
        ),
        TaskSpec(
            "lm",
            "lm",
            LM_TEMPLATE,
            False,
            ("lm", "text", "plain_text"),
            description="plain text (LM loss only)",
        ),
    ]
}

EVAL_TASKS = (
    "nq",
    "hotpotqa",
    "simpleqa",
    "2wikimultihopqa",
    "trex",
    "zsre",
    "fever",
    "aida",
)  # paper Table 2

_ALIASES: dict[str, str] = {}
for _t in TASKS.values():
    for _a in (_t.name, *_t.kilt_aliases):
        _ALIASES[_a.lower()] = _t.name


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Registry name or alias (2wiki, structured_zeroshot, aidayago2, ...) -> TaskSpec; else UserError."""
    if isinstance(name, TaskSpec):
        return name
    key = str(name).strip().lower()
    if key in _ALIASES:
        return TASKS[_ALIASES[key]]
    raise UserError(
        f"unknown task {name!r}; choose one of: {', '.join(TASKS)} (aliases: 2wiki, structured_zeroshot, aidayago2)"
    )


def task_for_file(path: str | Path) -> str | None:
    """Guess the task from a file name ("structured_zeroshot-dev-kilt.jsonl" -> "zsre") or its folder
    ("nq/dev.jsonl" -> "nq"); None when nothing matches."""
    p = Path(path)
    stem = p.name.lower()
    for suffix in (".gz", ".jsonl", ".json"):
        stem = stem.removesuffix(suffix)
    # longest alias first so "wned-cweb" is tried before "wned"
    for alias in sorted(_ALIASES, key=len, reverse=True):
        if stem == alias or re.match(re.escape(alias) + r"[-_.]", stem):
            return _ALIASES[alias]
    parent = p.parent.name.lower()
    return _ALIASES.get(parent)


def convert_markers(text: str) -> str:
    """KILT's [START_ENT]/[END_ENT] -> [START]/[END] (the markers our prompts name)."""
    for old, new in KILT_MENTION_MARKERS.items():
        text = text.replace(old, new)
    return text


def truncate_around_mention(text: str, max_words: int | None, max_chars: int | None = None) -> str:
    """Keep a window of at most `max_words` whitespace words (then `max_chars` characters) centred on
    the [START] ... [END] mention, so that long documents leave room for the instruction after them.

    The mention itself is always kept whole. Without markers the window is the start of the text.
    """
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    if max_words is not None and len(spans) > max_words:
        words = [text[a:b] for a, b in spans]
        s = next((i for i, w in enumerate(words) if START in w), 0)
        e = next((i for i in range(s, len(words)) if END in words[i]), s)
        room = max(max_words - (e - s + 1), 0)
        lo, hi = s - room // 2, e + (room - room // 2)
        if lo < 0:  # window hits the start: give the spare words to the right
            hi, lo = hi - lo, 0
        if hi > len(words) - 1:
            lo, hi = max(lo - (hi - (len(words) - 1)), 0), len(words) - 1
        text = text[spans[lo][0] : spans[hi][1]]
    if max_chars is not None and len(text) > max_chars:
        a, b = text.find(START), text.find(END)
        if a < 0:
            return text[:max_chars]
        b = b + len(END) if b >= a else a + len(START)
        room = max(max_chars - (b - a), 0)
        lo, hi = a - room // 2, b + (room - room // 2)
        if lo < 0:
            hi, lo = hi - lo, 0
        if hi > len(text):
            lo, hi = max(lo - (hi - len(text)), 0), len(text)
        text = text[lo:hi]
    return text


def input_fields(
    task: str | TaskSpec,
    raw: str | Mapping[str, str],
    max_context_words: int | None = None,
    max_context_chars: int | None = None,
) -> dict[str, str]:
    """Raw input (a KILT `input` string, or a mapping of the template's fields) -> template fields.

    Conversions: mention markers become [START]/[END]; slot filling splits "entity [SEP] relation";
    entity-linking contexts are cut to a window around the mention (budget: argument, else the spec's).
    """
    spec = get_task(task)
    names = spec.fields
    if isinstance(raw, Mapping):
        missing = [f for f in names if f not in raw]
        if spec.kind == "slot" and missing and "input" in raw:
            return input_fields(spec, str(raw["input"]), max_context_words, max_context_chars)
        if missing:
            raise UserError(
                f"task {spec.name} needs the fields {', '.join(names)}; missing: {', '.join(missing)}"
            )
        values = {f: convert_markers(str(raw[f])) for f in names}
    elif spec.kind == "slot":
        text = convert_markers(str(raw))
        if SEP not in text:
            raise UserError(f"task {spec.name} input must read 'entity [SEP] relation', got {text[:80]!r}")
        entity, relation = text.split(SEP, 1)
        values = {"entity": entity.strip(), "relation": relation.strip()}
    elif len(names) == 1:
        values = {names[0]: convert_markers(str(raw)).strip()}
    else:
        raise UserError(
            f"task {spec.name} needs the fields {', '.join(names)} (a JSON object), not a single string"
        )
    if spec.kind == "aida":
        words = max_context_words if max_context_words is not None else spec.max_context_words
        values["context"] = truncate_around_mention(values["context"], words, max_context_chars)
    return values


def apply_template(
    task: str | TaskSpec,
    raw: str | Mapping[str, str],
    max_context_words: int | None = None,
    max_context_chars: int | None = None,
) -> str:
    """The prompt the model sees for this task and raw input."""
    spec = get_task(task)
    return spec.template.format(**input_fields(spec, raw, max_context_words, max_context_chars))
