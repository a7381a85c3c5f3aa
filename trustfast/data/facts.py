"""Synthetic fictitious-person facts in the style of TOFU (Maini et al., 2024), with no download.

Each person has four attributes (birthplace, job, birth year, favourite colour) and one
question/answer pair per attribute, plus what TOFU's metrics need: a paraphrased question, a
paraphrased answer, three perturbed (wrong) answers written like the paraphrased answer with
another value of the attribute, and an "I don't know" refusal. Answers are at most 8 words, so a
tiny causal LM can memorize them. `WordTokenizer` is a word-level tokenizer over these texts
(`WordTokenizer.to_hf()`: the same ids as a Hugging Face tokenizer) and `encode_qa` / `collate`
(from `trustfast.data.qa`) build Hugging Face causal-LM batches ("<bos> Question: q Answer: a
<eos>", loss only on the answer).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from trustfast.data.qa import QA, REFUSALS, collate, encode_qa

__all__ = ["ATTRIBUTES", "QA", "REFUSALS", "FactsDataset", "Person", "WordTokenizer", "collate",
           "encode_qa", "make_facts", "split"]

CITIES = (
    "Lisbon", "Oslo", "Kyoto", "Lima", "Cairo", "Dublin", "Quito", "Hanoi", "Tunis", "Riga",
    "Porto", "Bergen", "Nantes", "Graz", "Turku", "Malmo", "Cusco", "Bruges", "Split", "Leeds",
    "Varna", "Kaunas", "Tartu", "Ghent", "Arles", "Zadar", "Luzern", "Aarhus", "Sintra", "Olinda",
)
JOBS = (
    "baker", "pilot", "nurse", "painter", "sculptor", "chemist", "architect", "librarian",
    "carpenter", "tailor", "poet", "surgeon", "jeweler", "astronomer", "gardener", "potter",
    "engineer", "violinist", "geologist", "journalist", "butcher", "fisherman", "translator",
    "botanist", "photographer", "locksmith", "cartographer", "dentist", "economist", "weaver",
)
COLOURS = (
    "red", "blue", "green", "yellow", "purple", "orange", "black", "white", "pink", "brown",
    "grey", "teal",
)
YEARS = tuple(range(1900, 2001))
ATTRIBUTES = ("birthplace", "job", "birth_year", "colour")

# Two-syllable first and last names: 24 * 24 first names x 24 * 24 last names.
_SYLLABLES = (
    "vo", "rin", "kas", "tel", "mar", "eth", "lun", "dar", "sil", "ben", "tor", "wyn",
    "ka", "lio", "mer", "ova", "zel", "dra", "fen", "gal", "hul", "ise", "jor", "qua",
)

_QUESTIONS = {
    "birthplace": ("Where was {name} born?", "In which city was {name} born?"),
    "job": ("What is the job of {name}?", "What does {name} do for a living?"),
    "birth_year": ("When was {name} born?", "In what year was {name} born?"),
    "colour": ("What is the favourite colour of {name}?", "Which colour does {name} like best?"),
}
# (answer template, paraphrased answer template); perturbed answers use the paraphrased one,
# as TOFU's perturbed answers are edits of its paraphrased answer.
_ANSWERS = {
    "birthplace": ("{name} was born in {value}.", "The birthplace of {name} is {value}."),
    "job": ("{name} works as {article} {value}.", "By profession, {name} is {article} {value}."),
    "birth_year": ("{name} was born in {value}.", "The birth year of {name} is {value}."),
    "colour": ("{name}'s favourite colour is {value}.", "{name} likes {value} best."),
}
_N_PERTURBED = 3


@dataclass(frozen=True)
class Person:
    name: str
    birthplace: str
    job: str
    birth_year: int
    colour: str


@dataclass(frozen=True)
class FactsDataset:
    """People and their QA records (4 per person, in people order); indexable like a Dataset."""

    people: list[Person]
    qa: list[QA]

    def __len__(self) -> int:
        return len(self.qa)

    def __getitem__(self, index: int) -> QA:
        return self.qa[index]

    def texts(self) -> list[str]:
        """Every question and answer text (all variants), for building a tokenizer."""
        out = []
        for r in self.qa:
            out += [r.question, r.answer, r.paraphrased_question, r.paraphrased_answer,
                    *r.perturbed_answers, r.refusal]
        return out


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


def _fill(template: str, name: str, attribute: str, value: object) -> str:
    text = str(value)
    article = _article(text) if attribute == "job" else ""
    return template.format(name=name, value=text, article=article)


def _qa_records(person: Person, rng: random.Random) -> list[QA]:
    choices = {"birthplace": CITIES, "job": JOBS, "birth_year": YEARS, "colour": COLOURS}
    records = []
    for attribute in ATTRIBUTES:
        value = getattr(person, attribute)
        question, para_question = (q.format(name=person.name) for q in _QUESTIONS[attribute])
        answer, para_answer = (_fill(t, person.name, attribute, value)
                               for t in _ANSWERS[attribute])
        wrong = rng.sample([v for v in choices[attribute] if v != value], _N_PERTURBED)
        perturbed = [_fill(_ANSWERS[attribute][1], person.name, attribute, v) for v in wrong]
        records.append(QA(question, answer, para_question, para_answer, perturbed,
                          rng.choice(REFUSALS), person.name, attribute))
    return records


def make_facts(n_people: int = 100, seed: int = 0) -> FactsDataset:
    """`n_people` fictitious people (unique syllable-combination names) and 4 QA records each.

    Names, attribute values, perturbed values and refusals are drawn from `seed`: the same seed
    gives the same facts everywhere.
    """
    capacity = len(_SYLLABLES) ** 4
    if not isinstance(n_people, int) or not 1 <= n_people <= capacity:
        raise ValueError(f"n_people must be an int in [1, {capacity}], got {n_people!r}")
    rng = random.Random(seed)

    def part() -> str:
        return (rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES)).capitalize()

    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n_people:
        name = f"{part()} {part()}"
        if name not in seen:
            seen.add(name)
            names.append(name)
    people = [Person(name, rng.choice(CITIES), rng.choice(JOBS), rng.choice(YEARS),
                     rng.choice(COLOURS)) for name in names]
    qa = [record for person in people for record in _qa_records(person, rng)]
    return FactsDataset(people, qa)


def split(facts: FactsDataset, forget: float = 0.1, holdout: float = 0.1,
          seed: int = 0) -> tuple[list[QA], list[QA], list[QA]]:
    """(forget, retain, holdout) QA lists, split by person (TOFU's forget01/05/10 style).

    round(forget * n_people) people go to the forget set, round(holdout * n_people) to the
    holdout set (never trained on: the non-members of membership-inference metrics), the rest
    to the retain set. Each list keeps the order of `facts.qa`.
    """
    if not isinstance(facts, FactsDataset):
        raise TypeError(f"facts must be a FactsDataset, got {type(facts).__name__}")
    if not 0.0 < forget < 1.0:
        raise ValueError(f"forget must be in (0, 1), got {forget}")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    n = len(facts.people)
    n_forget, n_holdout = round(forget * n), round(holdout * n)
    if n_forget < 1 or n_forget + n_holdout >= n:
        raise ValueError(f"forget={forget}, holdout={holdout} of {n} people leave "
                         f"{n_forget} forget and {n - n_forget - n_holdout} retain people; "
                         "each needs at least 1")
    order = [p.name for p in facts.people]
    random.Random(seed).shuffle(order)
    forget_names, holdout_names = set(order[:n_forget]), set(order[n_forget:n_forget + n_holdout])
    parts: tuple[list[QA], list[QA], list[QA]] = ([], [], [])
    for record in facts.qa:
        index = 0 if record.person in forget_names else 2 if record.person in holdout_names else 1
        parts[index].append(record)
    return parts


# Words are runs of anything but whitespace and ?.,' ; each of ?.,' is a token of its own.
_TOKEN = re.compile(r"[^\s?.,']+|[?.,']")
_NO_SPACE_BEFORE = frozenset("?.,'")
_NO_SPACE_AFTER = frozenset("'")
_FORMAT_WORDS = ("Question:", "Answer:")


class WordTokenizer:
    """Word-level tokenizer: <pad>=0, <bos>=1, <eos>=2, <unk>=3, then the prompt words
    "Question:", "Answer:", then every word and punctuation mark of `texts`, sorted.

    Texts split on whitespace and on each of ? . , ' (kept as tokens). `decode` joins tokens
    with one space except before ? . , ' and after ' , so it inverts `encode` on every text
    written that way (all texts of `make_facts`).
    """

    SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")

    def __init__(self, texts: Iterable[str]):
        words = {w for text in texts for w in _TOKEN.findall(text)}
        words -= set(self.SPECIALS) | set(_FORMAT_WORDS)
        self.itos: list[str] = [*self.SPECIALS, *_FORMAT_WORDS, *sorted(words)]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no <bos>/<eos>); unknown words map to <unk>."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return [self.stoi.get(w, self.unk_id) for w in _TOKEN.findall(text)]

    def decode(self, ids: Sequence[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """The text of `ids`; special tokens appear as "<eos>" etc. unless skipped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        out = ""
        previous = None
        for i in ids:
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.itos)})")
            if skip_special_tokens and i < len(self.SPECIALS):
                continue
            word = self.itos[i]
            if previous is not None and word not in _NO_SPACE_BEFORE \
                    and previous not in _NO_SPACE_AFTER:
                out += " "
            out += word
            previous = word
        return out

    def to_hf(self):
        """This vocabulary as a Hugging Face `PreTrainedTokenizerFast` (built offline with the
        `tokenizers` library), with the same ids: a WordLevel model, whitespace split then each
        of ? . , ' isolated, <bos>/<eos>/<pad>/<unk> as its special tokens. Its `decode` cleans
        up tokenization spaces (" ." -> ".", " ' " -> "'"), which gives this tokenizer's
        `decode` on every text of `make_facts`. `save_pretrained` writes it as tokenizer.json,
        which `AutoTokenizer.from_pretrained` reads back."""
        from tokenizers import Regex, Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        backend = Tokenizer(models.WordLevel(vocab=dict(self.stoi), unk_token="<unk>"))
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Split(Regex(r"[?.,']"), behavior="isolated")])
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>",
                                       eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                       clean_up_tokenization_spaces=True)
