"""One task example, whatever file format it came from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Provenance:
    """A gold evidence pointer: this corpus's `passage_id` and/or KILT's `wikipedia_id` and `title`."""

    passage_id: str | None = None
    wikipedia_id: str | None = None
    title: str | None = None


@dataclass
class Example:
    id: str
    task: str  # registry name: nq, hotpotqa, trex, zsre, fever, aida, ...
    input: str  # the raw input as in the file
    prompt: str  # the task template applied to `input` (what the model sees)
    answers: list[str] = field(default_factory=list)  # every gold answer (may be empty for test files)
    provenance: list[Provenance] = field(default_factory=list)
    source: str = ""  # "file:line", for error messages
