"""The synthetic world's knowledge graph: invented countries, cities, people, organisations and works,
each with typed facts that point at one another (born_in -> city -> located_in -> country ...).

Facts are functional (one value per entity and relation), so a question has one answer and a claim with
a swapped value is false. Values are stored as the exact surface strings the passages will contain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from imprag.demo.world_names import NameMaker, initials

KINDS = ("country", "city", "person", "org", "work")
SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

# share of the world per kind (people take what is left) and share of each kind that are near-miss twins
_KIND_SHARE = {"country": 0.02, "city": 0.14, "org": 0.18, "work": 0.2}
_KIND_MIN = {"country": 3, "city": 6, "org": 5, "work": 5}
_TWIN_SHARE = {"country": 0.0, "city": 0.1, "person": 0.12, "org": 0.1, "work": 0.1}


@dataclass(frozen=True)
class Relation:
    """A relation's labels: T-REx uses Wikidata property labels, zsRE question-like phrases."""

    name: str
    kind: str  # subject kind
    trex: str
    zsre: str
    zsre_question: str  # "{e}" = subject name (KILT zsRE files carry such template questions)


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in [
        Relation(
            "birth_year", "person", "date of birth", "year this person was born", "In what year was {e} born?"
        ),
        Relation(
            "born_in",
            "person",
            "place of birth",
            "city this person was born in",
            "Which city was {e} born in?",
        ),
        Relation(
            "citizen_of", "person", "country of citizenship", "nationality", "What is the nationality of {e}?"
        ),
        Relation(
            "occupation",
            "person",
            "occupation",
            "what this person does for a living",
            "What job does {e} do?",
        ),
        Relation(
            "educated_at", "person", "educated at", "school attended", "Which university did {e} go to?"
        ),
        Relation("employer", "person", "employer", "works for which organisation", "Who does {e} work for?"),
        Relation("nickname", "person", "nickname", "also known as", "What is {e} also called?"),
        Relation("spouse", "person", "spouse", "married to", "Who did {e} marry?"),
        Relation("award", "person", "award received", "prize won", "Which prize did {e} win?"),
        Relation("located_in", "city", "country", "which country it is in", "Which country is {e} in?"),
        Relation(
            "capital_of",
            "city",
            "capital of",
            "capital of which country",
            "Which country has {e} as its capital?",
        ),
        Relation("city_founded", "city", "inception", "year the town was founded", "When was {e} founded?"),
        Relation(
            "river",
            "city",
            "located in or next to body of water",
            "river that runs through it",
            "Which river flows through {e}?",
        ),
        Relation(
            "population", "city", "population", "how many people live there", "How many people live in {e}?"
        ),
        Relation("mayor", "city", "head of government", "who the mayor is", "Who is the mayor of {e}?"),
        Relation("region", "country", "continent", "part of which region", "In which region is {e}?"),
        Relation("capital", "country", "capital", "capital city", "What is the capital city of {e}?"),
        Relation(
            "official_language",
            "country",
            "official language",
            "language spoken officially",
            "What language is official in {e}?",
        ),
        Relation("currency", "country", "currency", "money used", "What money is used in {e}?"),
        Relation(
            "independence", "country", "inception", "year of independence", "When did {e} become independent?"
        ),
        Relation(
            "head_of_state",
            "country",
            "head of state",
            "who leads the country",
            "Who is the head of state of {e}?",
        ),
        Relation("founded_by", "org", "founded by", "who set it up", "Who set up {e}?"),
        Relation("org_founded", "org", "inception", "year it was established", "When was {e} established?"),
        Relation(
            "headquarters",
            "org",
            "headquarters location",
            "city it is based in",
            "In which city is {e} based?",
        ),
        Relation("acronym", "org", "short name", "abbreviated as", "What is {e} abbreviated to?"),
        Relation("leader", "org", "director / manager", "who is in charge", "Who is in charge of {e}?"),
        Relation("author", "work", "author", "who made it", "Who created {e}?"),
        Relation("work_year", "work", "publication date", "year it came out", "When did {e} come out?"),
        Relation("genre", "work", "genre", "what kind of work it is", "What kind of work is {e}?"),
        Relation(
            "work_language",
            "work",
            "language of work or name",
            "original language",
            "What language is {e} in?",
        ),
        Relation(
            "set_in", "work", "narrative location", "city where the story takes place", "Where is {e} set?"
        ),
        Relation("publisher", "work", "publisher", "company that put it out", "Which company put out {e}?"),
    ]
}
# T-REx labels that depend on the kind of work (Wikidata: author / director / performer / creator)
AUTHOR_LABEL = {
    "novel": "author",
    "play": "author",
    "film": "director",
    "album": "performer",
    "painting": "creator",
}
PUBLISHER_LABEL = {
    "novel": "publisher",
    "play": "publisher",
    "film": "production company",
    "album": "record label",
}
WORK_YEAR_LABEL = {"novel": "publication date", "play": "publication date", "film": "publication date",
                   "album": "publication date", "painting": "inception"}  # fmt: skip

OCCUPATIONS = (
    "painter", "cartographer", "chemist", "novelist", "architect", "composer", "sculptor", "astronomer",
    "botanist", "engineer", "historian", "poet", "physician", "economist", "diplomat", "linguist",
    "photographer", "mathematician", "philosopher", "film director", "journalist", "violinist",
    "geologist", "playwright", "surgeon", "actor", "politician", "banker", "inventor", "lawyer",
    "singer", "pianist", "screenwriter", "archaeologist",
)  # fmt: skip
# which occupations make which kind of work (an author is drawn from these first)
WORK_MAKERS = {
    "novel": ("novelist", "poet", "journalist", "historian", "screenwriter"),
    "play": ("playwright", "poet", "novelist", "actor"),
    "film": ("film director", "screenwriter", "actor", "photographer"),
    "album": ("composer", "singer", "violinist", "pianist"),
    "painting": ("painter", "sculptor", "photographer", "architect"),
}
WORK_KINDS = (("novel", 0.33), ("play", 0.14), ("film", 0.25), ("album", 0.16), ("painting", 0.12))
GENRES = {
    "novel": (
        "historical",
        "crime",
        "science fiction",
        "romance",
        "adventure",
        "satirical",
        "gothic",
        "mystery",
    ),
    "play": ("tragedy", "comedy", "farce", "historical drama", "satire"),
    "film": ("drama", "comedy", "thriller", "documentary", "western", "musical", "war", "horror"),
    "album": ("jazz", "folk", "rock", "electronic", "choral", "blues", "ambient"),
    "painting": ("landscape", "portrait", "still life", "seascape", "allegorical"),
}
ORG_KINDS = (("university", 0.25), ("company", 0.35), ("newspaper", 0.1), ("museum", 0.1),
             ("orchestra", 0.08), ("institute", 0.12))  # fmt: skip
INDUSTRIES = ("Textiles", "Shipping", "Mining", "Instruments", "Publishing", "Pharmaceuticals", "Railways",
              "Aviation", "Breweries", "Software", "Motors", "Foods", "Glassworks", "Telegraph")  # fmt: skip
# how a passage describes an organisation of each kind ("a shipping company based in ...")
# "Orvane Textiles is a textile company"
INDUSTRY_ADJ = {"Textiles": "textile", "Instruments": "instrument", "Pharmaceuticals": "pharmaceutical",
                "Railways": "railway", "Breweries": "brewing", "Motors": "motor", "Foods": "food",
                "Glassworks": "glass"}  # fmt: skip
AWARD_FORMS = ("{X} Prize", "{X} Medal", "Order of {X}", "{X} Award")
_KIND_DESC = {
    "university": ("public university", "private university", "research university"),
    "company": ("{industry} company", "{industry} firm"),
    "newspaper": ("daily newspaper", "weekly newspaper"),
    "museum": ("museum",),
    "orchestra": ("symphony orchestra", "orchestra"),
    "institute": ("research institute", "scientific institute"),
}
PAPER_WORDS = ("Herald", "Courier", "Gazette", "Tribune", "Chronicle", "Observer")
MUSEUM_FIELDS = ("Art", "Natural History", "Maps", "Science", "Antiquities", "Modern Art")
INSTITUTE_FIELDS = (
    "Optics",
    "Marine Biology",
    "Linguistics",
    "Astronomy",
    "Economics",
    "Seismology",
    "Tropical Medicine",
)
TITLE_NOUNS = ("Harbour", "Orchard", "Lantern", "Winter", "Letters", "Bridge", "Garden", "Crossing", "Mirror",
               "Silence", "Voyage", "Tower", "Archive", "Shore", "Ember", "Requiem", "Meadow", "Compass")  # fmt: skip
TITLE_ADJ = (
    "Silent",
    "Last",
    "Hidden",
    "Salt",
    "Iron",
    "Quiet",
    "Broken",
    "Distant",
    "Golden",
    "Northern",
    "Pale",
)


@dataclass
class Entity:
    """One thing in the world and its passage."""

    index: int  # position in World.entities
    kind: str  # one of KINDS
    name: str  # unique; the passage title
    invented: tuple[int, ...] = ()  # word positions of invented words (what a twin respells)
    facts: dict[str, str] = field(default_factory=dict)  # relation -> surface value found verbatim in text
    refs: dict[str, int] = field(default_factory=dict)  # relation -> index of the entity that value names
    attrs: dict[str, str] = field(default_factory=dict)  # gender, org_kind, work_kind, surname, kind_desc...
    twin_of: int | None = None  # the entity whose near-miss name this one carries
    split: str = "train"  # which task split asks questions about this entity
    pid: str = ""  # passage id
    sentences: list[str] = field(default_factory=list)  # the passage text, sentence by sentence
    shown: tuple[str, ...] = ()  # relations whose value the passage states (questions ask only these)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass
class World:
    seed: int
    entities: list[Entity]

    def ref(self, e: Entity, rel: str) -> Entity:
        return self.entities[e.refs[rel]]


def _kind_counts(n: int) -> dict[str, int]:
    counts = {k: max(_KIND_MIN[k], round(n * share)) for k, share in _KIND_SHARE.items()}
    counts["person"] = n - sum(counts.values())
    return {k: counts[k] for k in KINDS}


def _weighted(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([k for k, _ in table], weights=[w for _, w in table])[0]


def _population(rng: random.Random) -> str:
    n = int(round(10 ** rng.uniform(3.9, 6.4), -3))
    return f"{n:,}"


class _Builder:
    def __init__(self, seed: int, n: int) -> None:
        self.rng = random.Random(f"world-graph:{seed}")
        self.names = NameMaker(self.rng)
        self.seed, self.n = seed, n
        self.entities: list[Entity] = []

    def add(self, kind: str, name: str, invented: tuple[int, ...], twin_of: int | None = None) -> Entity:
        e = Entity(index=len(self.entities), kind=kind, name=name, invented=invented, twin_of=twin_of)
        self.entities.append(e)
        return e

    def twins(self, base: list[Entity], count: int) -> list[Entity]:
        """Near-miss namesakes of `count` random entities of `base` (same kind, their own facts)."""
        out = []
        for b in self.rng.sample(base, min(count, len(base))):
            name = self.names.similar(b.name, b.invented)
            if name is not None:
                t = self.add(b.kind, name, b.invented, twin_of=b.index)
                t.attrs = {
                    k: v for k, v in b.attrs.items() if k in ("org_kind", "work_kind", "gender", "industry")
                }
                if b.kind == "person":
                    given, surname = name.split(" ", 1)
                    t.attrs.update(given=given, surname=surname)
                out.append(t)
        return out

    def build(self) -> World:
        r, names = self.rng, self.names
        counts = _kind_counts(self.n)
        twin_n = {k: int(counts[k] * _TWIN_SHARE[k]) for k in KINDS}

        # pools of plain values (not entities)
        n_c = counts["country"]
        regions = [names.region() for _ in range(max(2, n_c // 4))]
        languages = [names.word("language") for _ in range(max(3, round(n_c * 0.7)))]
        currencies = [names.word("currency").lower() for _ in range(max(3, round(n_c * 0.6)))]
        rivers = [names.word("river") for _ in range(max(4, counts["city"] // 2))]

        countries = [self.add("country", names.word("country"), (0,)) for _ in range(n_c)]

        base_cities = [self._city() for _ in range(counts["city"] - twin_n["city"])]
        cities = base_cities + self.twins(base_cities, twin_n["city"])

        n_org = counts["org"] - twin_n["org"]
        base_orgs = [self._org(r.choice(cities)) for _ in range(n_org)]
        orgs = base_orgs + self.twins(base_orgs, twin_n["org"])

        n_work = counts["work"] - twin_n["work"]
        base_works = [self._work(r.choice(cities)) for _ in range(n_work)]
        works = base_works + self.twins(base_works, twin_n["work"])

        # people: given names and surnames are shared (surname-only mentions are ambiguous)
        n_person = self.n - len(self.entities)
        n_base = n_person - int(n_person * _TWIN_SHARE["person"])
        surnames = [names.word("surname", (1, 2)) for _ in range(max(2, n_base // 3))]
        given = {
            g: [names.word(f"given_{g}", (1, 2)) for _ in range(max(2, n_base // 4))] for g in ("f", "m")
        }
        base_people = [self._person(given, surnames) for _ in range(n_base)]
        people = base_people + self.twins(base_people, n_person - n_base)
        while len(self.entities) < self.n:  # a twin found no free spelling: top up with a fresh person
            people.append(self._person(given, surnames))

        # facts (after every entity exists, since they point at one another)
        for c in countries:
            self._set(c, "region", r.choice(regions))
            self._set(c, "official_language", r.choice(languages))
            self._set(c, "currency", r.choice(currencies))
            self._set(c, "independence", str(r.randint(1650, 1995)))
        for i, city in enumerate(cities):
            country = countries[i] if i < len(countries) else r.choice(countries)
            self._link(city, "located_in", country)
            if i < len(countries):  # the first city of each country is its capital
                self._link(city, "capital_of", country)
                self._link(country, "capital", city)
            self._set(city, "city_founded", str(r.randint(880, 1890)))
            if r.random() < 0.75:
                self._set(city, "river", r.choice(rivers))
            if r.random() < 0.7:
                self._set(city, "population", _population(r))
        universities = [o for o in orgs if o.attrs["org_kind"] == "university"] or orgs
        for p in people:
            p.attrs["gender"] = r.choice("fm") if "gender" not in p.attrs else p.attrs["gender"]
            self._set(p, "birth_year", str(r.randint(1770, 1995)))
            born = r.choice(cities)
            self._link(p, "born_in", born)
            country = self.entities[born.refs["located_in"]] if r.random() < 0.75 else r.choice(countries)
            self._link(p, "citizen_of", country)
            self._set(p, "occupation", r.choice(OCCUPATIONS))
            if r.random() < 0.75:
                self._link(p, "educated_at", r.choice(universities))
            if r.random() < 0.6:
                self._link(p, "employer", r.choice(orgs))
            if r.random() < 0.25:
                self._set(p, "nickname", names.word("given_" + p.attrs["gender"], (1, 1)))
        awards = [names.unique(lambda: r.choice(AWARD_FORMS).format(X=names.word("root", reserve=False)))
                  for _ in range(max(4, len(people) // 15))]  # fmt: skip
        for p in people:
            if r.random() < 0.35:
                self._set(p, "award", r.choice(awards))
        # marriages: a third of the people, paired with someone of about the same age; both passages
        # name the other, so a person's name also appears in a passage that is not about them
        married = [p for p in people if r.random() < 0.3]
        married.sort(key=lambda p: (int(p.facts["birth_year"]), p.index))
        for a, b in zip(married[0::2], married[1::2]):
            self._link(a, "spouse", b)
            self._link(b, "spouse", a)
        by_occupation: dict[str, list[Entity]] = {}
        for p in people:
            by_occupation.setdefault(p.facts["occupation"], []).append(p)
        recent = [p for p in people if int(p.facts["birth_year"]) >= 1930] or people
        for city in cities:
            if r.random() < 0.5:
                self._link(city, "mayor", r.choice(recent))
        citizens: dict[int, list[Entity]] = {}
        for p in recent:
            citizens.setdefault(p.refs["citizen_of"], []).append(p)
        for c in countries:
            if r.random() < 0.8:
                self._link(c, "head_of_state", r.choice(citizens.get(c.index) or recent))
        for o in orgs:
            if r.random() < 0.55:
                self._link(o, "leader", r.choice(recent))
        for o in orgs:
            o.attrs["kind_desc"] = r.choice(_KIND_DESC[o.attrs["org_kind"]]).format(
                industry=o.attrs.get("industry", "")
            )
            self._link(o, "headquarters", self._hq(o, cities))
            if r.random() < 0.85:
                founder = r.choice(people)
                self._link(o, "founded_by", founder)
                year = int(founder.facts["birth_year"]) + r.randint(22, 60)
            else:
                year = r.randint(1700, 2015)
            self._set(o, "org_founded", str(min(year, 2020)))
            acr = initials(o.name)
            if len(acr) >= 3 and r.random() < 0.8:
                self._set(o, "acronym", acr)
        # candidate authors per kind of work: people in a fitting occupation, else anyone; recorded
        # media (film, album) only from people born late enough
        modern = [p for p in people if int(p.facts["birth_year"]) >= 1870] or people
        makers: dict[tuple[str, bool], list[Entity]] = {}
        for kind in WORK_MAKERS:
            fit = [p for occ in WORK_MAKERS[kind] for p in by_occupation.get(occ, [])]
            recorded = kind in ("film", "album")
            if recorded:
                fit = [p for p in fit if int(p.facts["birth_year"]) >= 1870]
            makers[kind, True] = fit or (modern if recorded else people)
            makers[kind, False] = modern if recorded else people
        companies = [o for o in orgs if o.attrs["org_kind"] == "company"]
        publishers = [o for o in companies if o.name.endswith("Publishing")]
        for w in works:
            kind = w.attrs["work_kind"]
            author = r.choice(makers[kind, r.random() < 0.85])
            self._link(w, "author", author)
            year = int(author.facts["birth_year"]) + r.randint(20, 65)
            if kind in ("film", "album"):
                year = max(year, 1905)
            self._set(w, "work_year", str(min(year, 2024)))
            self._set(w, "genre", r.choice(GENRES[kind]))
            if kind != "painting" and r.random() < 0.8:
                home = self.entities[author.refs["citizen_of"]]
                lang = home.facts["official_language"] if r.random() < 0.8 else r.choice(languages)
                self._set(w, "work_language", lang)
            if kind in ("novel", "play", "film") and r.random() < 0.7:
                self._link(w, "set_in", r.choice(cities))
            if kind in PUBLISHER_LABEL and companies and r.random() < 0.55:
                fit = publishers if kind in ("novel", "play") and publishers else companies
                self._link(w, "publisher", r.choice(fit))

        self._assign_splits()
        return World(seed=self.seed, entities=self.entities)

    # -- entity makers ------------------------------------------------------------------------------

    def _set(self, e: Entity, rel: str, value: str) -> None:
        e.facts[rel] = value

    def _link(self, e: Entity, rel: str, target: Entity) -> None:
        e.facts[rel] = target.name
        e.refs[rel] = target.index

    def _city(self) -> Entity:
        name = self.names.city()
        return self.add("city", name, (len(name.split()) - 1,))

    def _person(self, given: dict[str, list[str]], surnames: list[str]) -> Entity:
        g = self.rng.choice("fm")
        for _ in range(1000):
            first, last = self.rng.choice(given[g]), self.rng.choice(surnames)
            if self.names.reserve(f"{first} {last}"):
                p = self.add("person", f"{first} {last}", (0, 1))
                p.attrs.update(gender=g, given=first, surname=last)
                return p
        # every combination is taken (tiny pools): invent a fresh given name
        first = self.names.word("given_" + g)
        last = self.rng.choice(surnames)
        self.names.reserve(f"{first} {last}")
        p = self.add("person", f"{first} {last}", (0, 1))
        p.attrs.update(gender=g, given=first, surname=last)
        return p

    def _org(self, city: Entity) -> Entity:
        r, names = self.rng, self.names
        kind = _weighted(r, ORG_KINDS)

        def make() -> tuple[str, bool]:
            """A name template with {X} for the invented part, and whether X is the city's name."""
            if kind == "university":
                return r.choice(
                    [("University of {X}", True), ("{X} University", False), ("{X} Polytechnic", True)]
                )
            if kind == "company":
                return "{X} " + r.choice(INDUSTRIES), False
            if kind == "newspaper":
                return "The {X} " + r.choice(PAPER_WORDS), r.random() < 0.5
            if kind == "museum":
                return r.choice([("{X} Museum of " + r.choice(MUSEUM_FIELDS), True), ("{X} Gallery", False)])
            if kind == "orchestra":
                return r.choice([("{X} Philharmonic", True), ("{X} Chamber Orchestra", False)])
            return "{X} Institute of " + r.choice(INSTITUTE_FIELDS), False

        for _ in range(1000):
            template, from_city = make()
            x = city.name if from_city else names.word("root", reserve=False)
            name, invented = _fill(template, x)
            if self.names.reserve(name):
                o = self.add("org", name, invented)
                o.attrs["org_kind"] = kind
                o.attrs["based"] = str(city.index) if from_city else ""
                if kind == "company":
                    word = name.split()[-1]
                    o.attrs["industry"] = INDUSTRY_ADJ.get(word, word.lower())
                return o
        raise RuntimeError("ran out of organisation names")

    def _hq(self, o: Entity, cities: list[Entity]) -> Entity:
        """An organisation named after a city sits in it; twins and the rest anywhere."""
        based = o.attrs.get("based", "")
        return self.entities[int(based)] if based else self.rng.choice(cities)

    def _work(self, city: Entity) -> Entity:
        r, names = self.rng, self.names
        kind = _weighted(r, WORK_KINDS)

        def make() -> tuple[str, str]:
            form = r.randrange(6)
            if form == 4:
                return "Letters from {X}", city.name
            x = names.word("root", reserve=False)
            if form == 0:
                return f"The {r.choice(TITLE_NOUNS)} of {{X}}", x
            if form == 1:
                return "{X}", x
            if form == 2:
                return f"{{X}}'s {r.choice(TITLE_NOUNS)}", x
            if form == 3:
                return f"The {r.choice(TITLE_ADJ)} {r.choice(TITLE_NOUNS)} of {{X}}", x
            return f"{r.choice(TITLE_ADJ)} {{X}}", x

        for _ in range(1000):
            template, x = make()
            name, invented = _fill(template, x)
            if self.names.reserve(name):
                w = self.add("work", name, invented)
                w.attrs["work_kind"] = kind
                return w
        raise RuntimeError("ran out of work titles")

    def _assign_splits(self) -> None:
        """Per kind, 80/10/10 of entities by a seeded shuffle: questions about an entity land in its split."""
        for kind in KINDS:
            group = [e for e in self.entities if e.kind == kind]
            self.rng.shuffle(group)
            n = len(group)
            n_dev = max(1, round(n * SPLIT_FRACTIONS[1])) if n >= 3 else 0
            n_test = max(1, round(n * SPLIT_FRACTIONS[2])) if n >= 3 else 0
            for i, e in enumerate(group):
                e.split = "dev" if i < n_dev else "test" if i < n_dev + n_test else "train"


def _fill(template: str, x: str) -> tuple[str, tuple[int, ...]]:
    """("University of {X}", "Port Velm") -> ("University of Port Velm", (3,)): the name and the word
    position of the invented word (the last word of X) that a twin respells."""
    words = template.split(" ")
    at = next(i for i, w in enumerate(words) if "{X}" in w)
    return template.replace("{X}", x), (at + len(x.split(" ")) - 1,)


def build_graph(seed: int, n: int) -> World:
    """The entities and their facts for `seed` (passages are written by world_text)."""
    return _Builder(seed, n).build()
