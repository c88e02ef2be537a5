"""Task examples over the synthetic world, in KILT JSONL shape, mirroring the paper's eight evaluation
formats plus the retrieval-free training tasks.

Every example is about one subject entity and lands in that entity's split, so dev/test ask about
other facts than train while the corpus holds every passage. Each answer is a fact value as the gold
passage states it (multi-hop: the last hop's passage), so answer recall can be measured.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from imprag.demo.world_graph import (
    AUTHOR_LABEL,
    GENRES,
    OCCUPATIONS,
    PUBLISHER_LABEL,
    RELATIONS,
    SPLITS,
    WORK_YEAR_LABEL,
    Entity,
    World,
)
from imprag.demo.world_names import article
from imprag.demo.world_text import display, work_phrases
from imprag.passage import passage_text

Record = dict[str, Any]
Rows = dict[str, list[Record]]  # split -> KILT records

_MAKER = {
    "novel": "author",
    "play": "author",
    "film": "director",
    "album": "performer",
    "painting": "painter",
}
_YEAR_BARE = {
    "novel": "published",
    "play": "first staged",
    "film": "released",
    "album": "released",
    "painting": "completed",
}

# Trailing requests added to half of the `nq` *train* questions, so that the implicit query learns to find
# the knowledge need even when other words stand between it and the prompt's last token (measured: a
# query trained on bare questions reads only the last few tokens; benchmarks/format_probe.py). None of
# their words occurs in an unseen format's instruction.
QA_REQUESTS = (
    "Be brief.",
    "Keep it short.",
    "Reply in as few words as possible.",
    "Just the name or value, please.",
    "One short phrase is enough.",
    "No explanation needed.",
    "Please reply concisely, without any comment.",
    "I need it quickly for a quiz.",
)
REQUEST_RATE = 0.5

# --- single-hop questions: `nq` (seen) and `simpleqa` (unseen) use disjoint relations and phrasing ----
NQ_QUESTIONS: dict[str, tuple[str, ...]] = {
    "born_in": ("Where was {e} born?", "In which city was {e} born?", "What is the birthplace of {e}?"),
    "occupation": (
        "What is the occupation of {e}?",
        "What profession is {e} known for?",
        "What is {e}'s profession?",
    ),
    "educated_at": ("Where did {e} study?", "Which university did {e} attend?", "Where was {e} educated?"),
    "located_in": (
        "Which country is {e} in?",
        "In what country is {e} located?",
        "{E} is a city in which country?",
    ),
    "capital_of": ("{E} is the capital of which country?", "Which country's capital is {e}?"),
    "spouse": ("Who is {e} married to?", "Who is the spouse of {e}?", "Whom did {e} marry?"),
    "mayor": ("Who is the mayor of {e}?", "Who serves as mayor of {e}?"),
    "head_of_state": ("Who is the head of state of {e}?", "Who leads {e} as head of state?"),
    "capital": ("What is the capital of {e}?", "What is the capital city of {e}?"),
    "founded_by": ("Who founded {e}?", "Who was the founder of {e}?"),
    "headquarters": (
        "Where is {e} headquartered?",
        "In which city is {e} based?",
        "Where are the headquarters of {e}?",
    ),
    "author": ("Who {made} {e}?", "Who is the {maker} of {e}?", "{E} was {made_by} whom?"),
}
SIMPLEQA_QUESTIONS: dict[str, tuple[str, ...]] = {
    "birth_year": ("In what year was {e} born?", "What is the birth year of {e}?"),
    "citizen_of": ("Of which country is {e} a citizen?", "What is the country of citizenship of {e}?"),
    "employer": ("Which organization has employed {e}?", "Name the employer of {e}."),
    "nickname": ("By what nickname is {e} known?", "What nickname is {e} known by?"),
    "award": ("Which award did {e} receive?", "What prize has {e} won?"),
    "leader": ("Who leads {e}?", "Who is the director of {e}?"),
    "publisher": ("Which company {pub_verb} the {noun} {e}?", "What company {pub_verb} {e}?"),
    "city_founded": ("In what year was the city of {e} founded?", "What year was {e} founded?"),
    "river": ("Which river flows through {e}?", "On which river does the city of {e} lie?"),
    "population": ("What is the approximate population of {e}?", "Roughly how many people live in {e}?"),
    "region": ("In which region is the country of {e} located?", "Which region is {e} part of?"),
    "official_language": ("What is the official language of {e}?", "Which language is official in {e}?"),
    "currency": ("What is the currency of {e}?", "What currency is used in {e}?"),
    "independence": ("In what year did {e} become independent?", "When did {e} gain independence?"),
    "org_founded": ("In what year was {e} founded?", "What year was {e} established?"),
    "acronym": ("What is the abbreviation of {e}?", "By what acronym is {e} known?"),
    "work_year": ("In what year was the {noun} {e} {year_bare}?", "What year did {e} come out?"),
    "genre": ("What genre is the {noun} {e}?", "To which genre does {e} belong?"),
    "work_language": ("In what language is the {noun} {e}?", "What is the original language of {e}?"),
    "set_in": ("In which city is {e} set?", "Where does the {noun} {e} take place?"),
}

# --- two-hop questions: (subject kind, first relation, second relation, templates) -------------------
Chain = tuple[str, str, str, tuple[str, ...]]
HOTPOT_CHAINS: tuple[Chain, ...] = (
    ("person", "born_in", "located_in", ("In which country is the city where {e} was born?",
                                         "{E} was born in a city that lies in which country?")),
    ("work", "author", "born_in", ("Where was the {maker} of {e} born?", "In which city was the person who {made} {e} born?")),
    ("org", "founded_by", "occupation", ("What is the profession of the founder of {e}?",
                                         "What was the occupation of the person who founded {e}?")),
    ("person", "educated_at", "headquarters", ("In which city is the university attended by {e}?",
                                               "Where is the university that {e} studied at based?")),
    ("country", "capital", "river", ("Which river flows through the capital of {e}?",)),
    ("work", "publisher", "headquarters", ("Where is the company that {pub_verb} {e} based?",
                                           "In which city is the publisher of the {noun} {e} headquartered?")),
    ("city", "mayor", "occupation", ("What is the profession of the mayor of {e}?",)),
    ("person", "spouse", "born_in", ("Where was the spouse of {e} born?", "In which city was the person {e} married born?")),
    ("org", "headquarters", "located_in", ("In which country is {e} headquartered?",
                                           "{E} is based in a city in which country?")),
)  # fmt: skip
TWOWIKI_CHAINS: tuple[Chain, ...] = (
    ("work", "author", "birth_year", ("When was the {maker} of the {noun} {e} born?", "What is the birth year of the {maker} of {e}?")),
    ("org", "founded_by", "citizen_of", ("Of which country is the founder of {e} a citizen?",
                                         "What is the country of citizenship of the founder of {e}?")),
    ("person", "employer", "org_founded", ("When was the employer of {e} founded?",
                                           "In what year was the organization that employed {e} founded?")),
    ("work", "set_in", "located_in", ("In which country is the city where the {noun} {e} is set?",)),
    ("person", "born_in", "river", ("Which river flows through the birthplace of {e}?",)),
    ("city", "located_in", "official_language", ("What is the official language of the country where {e} lies?",)),
    ("country", "head_of_state", "birth_year", ("When was the head of state of {e} born?",)),
    ("work", "publisher", "founded_by", ("Who founded the company that {pub_verb} {e}?",)),
)  # fmt: skip
COMPARISONS = {
    "person": ("Who was born first, {a} or {b}?", "Which person was born earlier, {a} or {b}?"),
    "org": ("Which was founded first, {a} or {b}?", "Which organization is older, {a} or {b}?"),
    "work": ("Which came out first, {a} or {b}?", "Which is older, {a} or {b}?"),
}
_YEAR_REL = {"person": "birth_year", "org": "org_founded", "work": "work_year"}

# --- FEVER claims: {e} subject, {v} value (true, or swapped for another of the same relation) --------
CLAIMS: dict[str, tuple[str, ...]] = {
    "born_in": ("{E} was born in {v}.", "{E} is a native of {v}."),
    "citizen_of": ("{E} is a citizen of {v}.", "{E} holds citizenship of {v}."),
    "occupation": ("{E} is {a_v} by profession.", "{E} worked as {a_v}."),
    "birth_year": ("{E} was born in {v}.",),
    "educated_at": ("{E} studied at {v}.", "{E} is a graduate of {v}."),
    "employer": ("{E} has worked for {v}.",),
    "spouse": ("{E} is married to {v}.", "{E} married {v}."),
    "award": ("{E} received the {v}.", "{E} won the {v}."),
    "mayor": ("{v} is the mayor of {e}.",),
    "head_of_state": ("{v} is the head of state of {e}.",),
    "leader": ("{E} is led by {v}.",),
    "publisher": ("{E} was {pub_verb} by {v}.",),
    "located_in": ("{E} is a city in {v}.", "{E} is located in {v}."),
    "city_founded": ("{E} was founded in {v}.",),
    "river": ("The {v} River flows through {e}.",),
    "region": ("{E} lies in the {v}.",),
    "capital": ("The capital of {e} is {v}.", "{v} is the capital of {e}."),
    "official_language": ("The official language of {e} is {v}.",),
    "currency": ("{E} uses the {v} as its currency.",),
    "independence": ("{E} became independent in {v}.",),
    "founded_by": ("{E} was founded by {v}.", "{v} is the founder of {e}."),
    "org_founded": ("{E} was established in {v}.",),
    "headquarters": ("{E} is headquartered in {v}.", "{E} is based in {v}."),
    "author": ("{E} was {made_by} {v}.",),
    "work_year": ("{E} was {year_verb} {v}.",),
    "genre": ("{E} is {a_v_genre}.",),
    "set_in": ("{E} is set in {v}.",),
    "work_language": ("{E} was {lang_verb} {v}.",),
}
_YEAR_RELS = ("birth_year", "city_founded", "independence", "org_founded", "work_year")

# --- entity linking: appositive and sentence forms of a clue, per kind and relation ------------------
CLUES: dict[str, dict[str, tuple[str, str]]] = {
    "person": {
        "occupation": ("the {v}", "{Sp} {is} {a_v}."),
        "born_in": ("a native of {v}", "{Sp} was born in {v}."),
        "educated_at": ("a graduate of {v}", "{Sp} studied at {v}."),
        "employer": ("an employee of {v}", "{Sp} {works} for {v}."),
        "citizen_of": ("a citizen of {v}", "{Sp} {holds} the citizenship of {v}."),
        "birth_year": ("born in {v}", "{Sp} was born in {v}."),
        "spouse": ("the spouse of {v}", "{Sp} {is} married to {v}."),
        "award": ("winner of the {v}", "{Sp} won the {v}."),
    },
    "org": {
        "kind": ("the {v}", "It is a {v}."),
        "headquarters": ("based in {v}", "It is based in {v}."),
        "founded_by": ("founded by {v}", "It was founded by {v}."),
        "leader": ("led by {v}", "It is led by {v}."),
        "org_founded": ("founded in {v}", "It was founded in {v}."),
    },
    "work": {
        "kind": ("the {v}", "It is a {v}."),
        "author": ("{made_by} {v}", "It was {made_by} {v}."),
        "work_year": ("from {v}", "It first appeared in {v}."),
        "set_in": ("set in {v}", "The story takes place in {v}."),
        "publisher": ("{pub_verb} by {v}", "It was {pub_verb} by {v}."),
    },
    "city": {
        "kind": ("the {v}", "It is a {v}."),
        "located_in": ("in {v}", "It lies in {v}."),
        "river": ("on the {v} River", "The {v} River flows through it."),
        "mayor": ("whose mayor is {v}", "Its mayor is {v}."),
        "city_founded": ("founded in {v}", "It was founded in {v}."),
    },
    "country": {
        "region": ("in the {v}", "It lies in the {v}."),
        "capital": ("whose capital is {v}", "Its capital is {v}."),
        "head_of_state": ("led by {v}", "Its head of state is {v}."),
        "official_language": ("where {v} is spoken", "Its official language is {v}."),
    },
}
EVENTS = {
    "person": ("spoke at a public meeting", "was among the guests at an award ceremony", "gave an interview to local radio",
               "attended the opening of a new library", "announced a new project this week"),
    "org": ("announced new plans on Tuesday", "was mentioned in a government report", "opened a new office this year",
            "celebrated an anniversary last week"),
    "work": ("was discussed at a festival on Sunday", "returned to public attention this spring",
             "was shown again after a long absence"),
    "city": ("hosted a regional fair on Saturday", "was hit by heavy storms this week", "elected a new council last month"),
    "country": ("signed a trade agreement on Thursday", "held elections last month", "announced new border rules"),
}  # fmt: skip
_LEADS = ("", "", "According to local reports, ", "In other news, ", "Sources said that ")
_TAILS = (
    "",
    "Further details were not given.",
    "The event drew a large crowd.",
    "More news is expected soon.",
)


def kilt(
    rid: str, inp: Any, answers: list[str], gold: list[Entity] | None, meta: dict | None = None
) -> Record:
    """{"id", "input", "output": [{"answer"}..., {"provenance": [{"passage_id", "title"}]}], "meta"?}."""
    output: list[dict[str, Any]] = [{"answer": a} for a in answers]
    if gold:
        output.append({"provenance": [{"passage_id": g.pid, "title": g.name} for g in gold]})
    rec: Record = {"id": rid, "input": inp, "output": output}
    if meta:
        rec["meta"] = meta
    return rec


class TaskMaker:
    """Builds every task's rows from a rendered world; one random stream per task."""

    def __init__(self, world: World, seed: int) -> None:
        self.world, self.seed = world, seed
        self.ents = world.entities
        # value pools for swapped FEVER claims, in first-seen order (deterministic)
        seen: dict[str, dict[str, None]] = {}
        for e in self.ents:
            for rel, v in e.facts.items():
                key = f"genre:{e.attrs['work_kind']}" if rel == "genre" else rel
                seen.setdefault(key, {})[v] = None
        self.pools: dict[str, list[str]] = {k: list(v) for k, v in seen.items()}
        self.pools["occupation"] = list(OCCUPATIONS)
        for kind, genres in GENRES.items():
            self.pools[f"genre:{kind}"] = list(genres)

    def rng(self, task: str) -> random.Random:
        return random.Random(f"world-task:{task}:{self.seed}")

    # -- helpers -------------------------------------------------------------------------------------

    def _slots(self, e: Entity) -> dict[str, str]:
        """Names and phrases a question about `e` may use: {e} mid-sentence, {E} sentence-initial."""
        name = display(e.name) if e.kind == "org" else e.name
        s = {"e": name, "E": name[0].upper() + name[1:]}
        if e.kind == "work":
            kind = e.attrs["work_kind"]
            s.update(work_phrases(kind, e.facts["genre"]), maker=_MAKER[kind], year_bare=_YEAR_BARE[kind])
        return s

    def _two_hop(self, e: Entity, rel1: str, rel2: str) -> Entity | None:
        """The bridge entity when both hops are stated in their passages."""
        if rel1 not in e.shown or rel1 not in e.refs:
            return None
        mid = self.ents[e.refs[rel1]]
        return mid if rel2 in mid.shown else None

    @staticmethod
    def _finish(task: str, rows: Rows, rng: random.Random, cap_train: bool = False) -> Rows:
        """Shuffle each split, optionally cap train at the dev size (unseen tasks), assign ids."""
        out: Rows = {}
        for split in SPLITS:
            if split not in rows:
                continue
            recs = rows[split]
            rng.shuffle(recs)
            if split == "train" and cap_train:
                recs = recs[: len(rows.get("dev", []))]
            for i, r in enumerate(recs):
                r["id"] = f"{task}-{split}-{i:05d}"
            out[split] = recs
        return out

    def _per_entity(
        self, task: str, make: Callable[[Entity, random.Random], list[Record]], cap_train: bool
    ) -> Rows:
        rng = self.rng(task)
        rows: Rows = {s: [] for s in SPLITS}
        for e in self.ents:
            rows[e.split].extend(make(e, rng))
        return self._finish(task, rows, rng, cap_train)

    # -- single-hop QA ---------------------------------------------------------------------------------

    def _single(self, table: dict[str, tuple[str, ...]], task: str, cap_train: bool, per_entity: int) -> Rows:
        def make(e: Entity, rng: random.Random) -> list[Record]:
            rels = [r for r in e.shown if r in table]
            rels = rng.sample(rels, min(per_entity, len(rels)))
            slots = self._slots(e)
            qs = [(r, rng.choice(table[r]).format(**slots)) for r in rels]
            return [
                kilt("", q, [e.facts[r]], [e], {"relation": r, "subject": e.pid})
                for r, q in qs
                if _fair(q, e.facts[r])
            ]

        return self._per_entity(task, make, cap_train)

    def nq(self) -> Rows:
        rows = self._single(NQ_QUESTIONS, "nq", cap_train=False, per_entity=len(NQ_QUESTIONS))
        rng = self.rng("nq-requests")  # its own stream: dev and test stay as they were
        for r in rows["train"]:
            if rng.random() < REQUEST_RATE:
                r["input"] = f"{r['input']} {rng.choice(QA_REQUESTS)}"
        return rows

    def simpleqa(self) -> Rows:
        return self._single(SIMPLEQA_QUESTIONS, "simpleqa", cap_train=True, per_entity=2)

    # -- multi-hop QA ----------------------------------------------------------------------------------

    def _chains(self, chains: tuple[Chain, ...], e: Entity, rng: random.Random) -> list[Record]:
        out = []
        for kind, rel1, rel2, templates in chains:
            if e.kind != kind:
                continue
            mid = self._two_hop(e, rel1, rel2)
            if mid is None:
                continue
            q = rng.choice(templates).format(**self._slots(e))
            if _fair(q, mid.facts[rel2]):
                out.append(
                    kilt("", q, [mid.facts[rel2]], [e, mid], {"relation": f"{rel1}>{rel2}", "subject": e.pid})
                )
        return out

    def hotpotqa(self) -> Rows:
        return self._per_entity(
            "hotpotqa", lambda e, rng: self._chains(HOTPOT_CHAINS, e, rng), cap_train=False
        )

    def twowiki(self) -> Rows:
        by_split_kind: dict[tuple[str, str], list[Entity]] = {}
        for e in self.ents:
            rel = _YEAR_REL.get(e.kind)
            if rel is not None and rel in e.shown:
                by_split_kind.setdefault((e.split, e.kind), []).append(e)

        def make(e: Entity, rng: random.Random) -> list[Record]:
            out = self._chains(TWOWIKI_CHAINS, e, rng)
            rel = _YEAR_REL.get(e.kind)
            if rel is None or rel not in e.shown or rng.random() >= 0.35:
                return out
            peers = by_split_kind[(e.split, e.kind)]
            other = rng.choice(peers)
            if other is e or other.facts[rel] == e.facts[rel]:
                return out
            earlier = e if int(e.facts[rel]) < int(other.facts[rel]) else other
            pair = [e, other] if rng.random() < 0.5 else [other, e]
            names = [display(x.name) if x.kind == "org" else x.name for x in pair]
            q = rng.choice(COMPARISONS[e.kind]).format(a=names[0], b=names[1])
            out.append(kilt("", q, [earlier.name], pair, {"relation": f"compare:{rel}", "subject": e.pid}))
            return out

        return self._per_entity("2wikimultihopqa", make, cap_train=True)

    # -- slot filling ----------------------------------------------------------------------------------

    @staticmethod
    def trex_label(e: Entity, rel: str) -> str:
        if rel == "author":
            return AUTHOR_LABEL[e.attrs["work_kind"]]
        if rel == "work_year":
            return WORK_YEAR_LABEL[e.attrs["work_kind"]]
        if rel == "publisher":
            return PUBLISHER_LABEL[e.attrs["work_kind"]]
        return RELATIONS[rel].trex

    def trex(self) -> Rows:
        def make(e: Entity, rng: random.Random) -> list[Record]:
            rels = [r for r in e.shown if _fair(e.name, e.facts[r])]
            rels = rng.sample(rels, min(2, len(rels)))
            return [
                kilt(
                    "",
                    f"{e.name} [SEP] {self.trex_label(e, r)}",
                    [e.facts[r]],
                    [e],
                    {"relation": r, "subject": e.pid},
                )
                for r in rels
            ]

        return self._per_entity("trex", make, cap_train=True)

    def zsre(self) -> Rows:
        """zsRE is zero-shot over relations: train asks one half of the relations, dev/test the other."""
        rel_names = list(RELATIONS)
        train_rels = set(rel_names[0::2])

        def make(e: Entity, rng: random.Random) -> list[Record]:
            allowed = [
                r for r in e.shown if (r in train_rels) == (e.split == "train") and _fair(e.name, e.facts[r])
            ]
            rels = rng.sample(allowed, min(2, len(allowed)))
            out = []
            for r in rels:
                rel = RELATIONS[r]
                meta = {
                    "relation": r,
                    "subject": e.pid,
                    "template_questions": [rel.zsre_question.format(e=e.name)],
                }
                out.append(kilt("", f"{e.name} [SEP] {rel.zsre}", [e.facts[r]], [e], meta))
            return out

        return self._per_entity("zsre", make, cap_train=True)

    # -- fact verification -----------------------------------------------------------------------------

    def _swap(self, e: Entity, rel: str, rng: random.Random) -> str | None:
        true = e.facts[rel]
        if rel in _YEAR_RELS:
            return str(int(true) + rng.choice((-1, 1)) * rng.randint(2, 40))
        pool = self.pools[f"genre:{e.attrs['work_kind']}" if rel == "genre" else rel]
        for _ in range(50):  # rejection sampling: pools are large, a clash is rare
            v = rng.choice(pool)
            if v != true and v != e.name:
                return v
        return None

    def fever(self) -> Rows:
        def make(e: Entity, rng: random.Random) -> list[Record]:
            rels = [r for r in e.shown if r in CLAIMS]
            out = []
            for r in rng.sample(rels, min(2, len(rels))):
                supports = rng.random() < 0.5
                v = e.facts[r] if supports else self._swap(e, r, rng)
                if v is None:
                    continue
                slots = self._slots(e)
                shown = display(v) if r in e.refs and self.ents[e.refs[r]].kind == "org" else v
                slots.update(v=shown, a_v=f"{article(v)} {v}")
                if e.kind == "work":
                    noun_phrase = work_phrases(e.attrs["work_kind"], v)["a_genre_noun"]
                    slots["a_v_genre"] = noun_phrase
                claim = rng.choice(CLAIMS[r]).format(**slots)
                label = "SUPPORTS" if supports else "REFUTES"
                out.append(kilt("", claim, [label], [e], {"relation": r, "subject": e.pid}))
            return out

        return self._per_entity("fever", make, cap_train=True)

    # -- entity linking --------------------------------------------------------------------------------

    def _mentions(self, e: Entity) -> list[str]:
        """Short, ambiguous-ish ways to refer to `e` (surname, nickname, acronym, invented root...)."""
        if e.kind == "person":
            out = [e.attrs["surname"], e.attrs["surname"], e.attrs["given"]]
            if "nickname" in e.shown:
                out.append(e.facts["nickname"])
            return out
        core = e.name.split(" ")[e.invented[0]] if e.invented else e.name
        if e.kind == "org":
            return [e.facts["acronym"], core] if "acronym" in e.shown else [core]
        if e.kind == "work":
            short = e.name[4:] if e.name.startswith("The ") else e.name
            return [short, core.removesuffix("'s")]
        return [e.name, core]

    def aida(self) -> Rows:
        index: dict[str, list[Entity]] = {}
        by_kind: dict[str, list[Entity]] = {}
        for e in self.ents:
            by_kind.setdefault(e.kind, []).append(e)
            for m in dict.fromkeys(self._mentions(e)):
                index.setdefault(m, []).append(e)

        def clue_value(x: Entity, rel: str) -> str | None:
            if rel == "kind":
                return {
                    "org": x.attrs.get("kind_desc"),
                    "work": x.attrs.get("work_kind"),
                    "city": "city",
                }.get(x.kind)
            return x.facts.get(rel) if rel in x.shown else None

        def appositive(x: Entity, rng: random.Random) -> tuple[str, str]:
            rels = [r for r in CLUES[x.kind] if clue_value(x, r) is not None]
            r = rng.choice(rels)
            return self._clue(CLUES[x.kind][r], x, r, clue_value(x, r) or "", self._aida_slots(x))

        def make(e: Entity, rng: random.Random) -> list[Record]:
            mention = rng.choice(self._mentions(e))
            namesakes = [c for c in index[mention] if c is not e and c.kind == e.kind]
            rivals = namesakes
            table = CLUES[e.kind]
            rels = [r for r in table if clue_value(e, r) is not None]
            rng.shuffle(rels)
            chosen: list[str] = []
            for r in rels:  # add clues that rule out remaining namesakes, at most three
                if len(chosen) == 3 or (chosen and not rivals):
                    break
                v = clue_value(e, r)
                left = [c for c in rivals if clue_value(c, r) == v]
                if len(left) < len(rivals) or not rivals:
                    chosen.append(r)
                    rivals = left
            if rivals or not chosen:
                return []  # cannot be told apart from a namesake: no example
            slots = self._aida_slots(e)
            phrases = [self._clue(table[r], e, r, clue_value(e, r) or "", slots) for r in chosen]
            lead = rng.choice(_LEADS)
            right = f", {phrases[0][0]}, {rng.choice(EVENTS[e.kind])}."
            extra = " ".join(p[1] for p in phrases[1:])
            tail = rng.choice(_TAILS)
            before = after = ""
            if rng.random() < 0.6:
                # another entity named in full (a namesake when there is one): the whole context is a
                # misleading query, the marked mention is what must be resolved
                other = rng.choice(namesakes) if namesakes else rng.choice(by_kind[e.kind])
                if other is not e:
                    name = display(other.name) if other.kind == "org" else other.name
                    sentence = f"{name[0].upper()}{name[1:]}, {appositive(other, rng)[0]}, {rng.choice(EVENTS[e.kind])}."
                    if rng.random() < 0.5:
                        before = sentence + " "
                    else:
                        after = sentence
            left_ctx = before + lead
            right_ctx = " ".join(x for x in (right, extra, after, tail) if x)
            text = f"{left_ctx}[START_ENT] {mention} [END_ENT]{right_ctx}"
            meta = {"mention": mention, "left_context": left_ctx.strip(), "right_context": right_ctx.strip(),
                    "subject": e.pid}  # fmt: skip
            return [kilt("", text, [e.name], [e], meta)]

        return self._per_entity("aida", make, cap_train=True)

    def _aida_slots(self, e: Entity) -> dict[str, str]:
        if e.kind == "person":
            past = int(e.facts["birth_year"]) < 1935
            return {"Sp": "She" if e.attrs["gender"] == "f" else "He", "is": "was" if past else "is",
                    "works": "worked" if past else "works", "holds": "held" if past else "holds"}  # fmt: skip
        if e.kind == "work":
            return work_phrases(e.attrs["work_kind"], e.facts["genre"])
        return {}

    def _clue(
        self, forms: tuple[str, str], e: Entity, rel: str, v: str, slots: dict[str, str]
    ) -> tuple[str, str]:
        shown = display(v) if rel in e.refs and self.ents[e.refs[rel]].kind == "org" else v
        fill = {**slots, "v": shown, "a_v": f"{article(v)} {v}"}
        return forms[0].format(**fill), forms[1].format(**fill)

    # -- retrieval-free training tasks (train split, train entities only) ------------------------------

    def _train_entities(self) -> list[Entity]:
        return [e for e in self.ents if e.split == "train"]

    def rc(self) -> Rows:
        """Reading comprehension: the passage (sometimes beside a distractor) and a question on it."""
        rng = self.rng("rc")
        pool = self._train_entities()
        table = {**NQ_QUESTIONS, **SIMPLEQA_QUESTIONS}
        recs = []
        for e in pool:
            rels = [r for r in e.shown if r in table]
            if not rels:
                continue
            r = rng.choice(rels)
            passages = [passage_text({"title": e.name, "text": e.text})]
            if rng.random() < 0.5:
                other = rng.choice(pool)
                if other is not e:
                    passages.insert(
                        rng.randint(0, 1), passage_text({"title": other.name, "text": other.text})
                    )
            question = rng.choice(table[r]).format(**self._slots(e))
            recs.append(kilt("", {"context": "\n".join(passages), "question": question}, [e.facts[r]], None))
        return self._finish("rc", {"train": recs}, rng)

    def denoise(self) -> Rows:
        """Phrase denoising: 1-3 stated fact values masked; the answer is the passage restored."""
        rng = self.rng("denoise")
        recs = []
        for e in self._train_entities():
            text = e.text
            spans = []
            for r in e.shown:
                v = e.facts[r]
                at = _only_occurrence(text, v)
                if at >= 0 and v not in e.name:
                    spans.append((at, at + len(v)))
            if not spans:
                continue
            spans = sorted(rng.sample(spans, min(len(spans), rng.randint(1, 3))))
            masked, last = [], 0
            for a, b in spans:
                if a < last:
                    continue
                masked.append(text[last:a] + "[MASK]")
                last = b
            masked.append(text[last:])
            inp = passage_text({"title": e.name, "text": "".join(masked)})
            recs.append(kilt("", inp, [passage_text({"title": e.name, "text": text})], None))
        return self._finish("denoise", {"train": recs}, rng)

    def nextsent(self, previous: bool = False) -> Rows:
        """Next (or previous) sentence: part of a passage in, the sentence after (before) it out."""
        task = "prevsent" if previous else "nextsent"
        rng = self.rng(task)
        recs = []
        for e in self._train_entities():
            s = e.sentences
            if len(s) < 2:
                continue
            k = rng.randint(1, len(s) - 1)  # split point: s[:k] | s[k:]
            if previous:
                ctx, ans = " ".join(s[k:]), s[k - 1]
            else:
                ctx, ans = " ".join(s[:k]), s[k]
            recs.append(kilt("", passage_text({"title": e.name, "text": ctx}), [ans], None))
        return self._finish(task, {"train": recs}, rng)


def _fair(question: str, answer: str) -> bool:
    """False when the answer can be read off the question ("Where is the University of Velmora based?")."""
    return answer.lower() not in question.lower()


def _only_occurrence(text: str, phrase: str) -> int:
    """Offset of `phrase` in `text` when it occurs exactly once as whole words, else -1."""
    found, start = -1, 0
    while (i := text.find(phrase, start)) >= 0:
        start = i + 1
        j = i + len(phrase)
        if (i > 0 and text[i - 1].isalnum()) or (j < len(text) and text[j].isalnum()):
            continue  # inside a longer word ("Velm" in "Velmora")
        if found >= 0:
            return -1
        found = i
    return found


def make_tasks(world: World, seed: int) -> dict[str, Rows]:
    """task name -> split -> KILT records, for every task the world supplies."""
    tm = TaskMaker(world, seed)
    return {
        "nq": tm.nq(),
        "hotpotqa": tm.hotpotqa(),
        "simpleqa": tm.simpleqa(),
        "2wikimultihopqa": tm.twowiki(),
        "trex": tm.trex(),
        "zsre": tm.zsre(),
        "fever": tm.fever(),
        "aida": tm.aida(),
        "rc": tm.rc(),
        "denoise": tm.denoise(),
        "nextsent": tm.nextsent(),
        "prevsent": tm.nextsent(previous=True),
    }
