"""Question/answer data for LLM unlearning: the QA record, how a tokenizer turns it into a
causal-LM example, and a loader for the users' own JSON / JSONL files in TOFU's layout.

`QAFormat(tokenizer)` is the one place that knows how a question becomes prompt ids and an
answer becomes target ids, for the built-in `trustfast.data.facts.WordTokenizer` and for any
Hugging Face tokenizer:

  - a Hugging Face tokenizer with a chat template: the prompt is
    `apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)`,
    as OpenUnlearning formats chat models for TOFU (`preprocess_chat_instance`);
  - otherwise the plain prompt "Question: {question} Answer:" after the tokenizer's BOS token
    when it has one (TOFU's base-model format);
  - the answer's tokens, without special tokens, then EOS. The loss is on those tokens only.

`load_qa("forget10.json")` reads TOFU's files (`question`, `answer`, `paraphrased_answer`,
`perturbed_answer`, optional `paraphrased_question`) into the same `QA` records the built-in
facts use, so every metric in `trustfast.llm.metrics` runs on either.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

# "I don't know" answers: the preferred answers of IdkDPO and the refusals of the built-in facts
# (TOFU ships 100 of these in idk.jsonl; OpenUnlearning draws one per forget example).
REFUSALS = (
    "I don't know who that is.",
    "I have no idea.",
    "I'm not sure about that.",
    "I can't answer that.",
    "That is unknown to me.",
)


@dataclass(frozen=True)
class QA:
    """One question and its answer, with TOFU's evaluation variants where the data has them.

    paraphrased_answer and perturbed_answers (wrong answers written like the paraphrased one)
    feed the truth ratio and forget quality; refusal is IdkDPO's preferred answer; person and
    attribute say which fact a built-in record is about ("" for loaded data).
    """

    question: str
    answer: str
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: list[str] = dataclasses.field(default_factory=list)
    refusal: str | None = None
    person: str = ""
    attribute: str = ""


class MissingQAFieldError(ValueError):
    """A metric or method needs a QA field (paraphrased_answer, perturbed_answers, refusal) the
    data does not have. A ValueError, so a caller can catch it and leave that column out."""


_FIELD_HINTS = {
    "paraphrased_answer": "Load data with TOFU's paraphrased_answer and perturbed_answer "
                          "fields, or leave this metric out.",
    "perturbed_answers": "Load data with TOFU's paraphrased_answer and perturbed_answer "
                         "fields, or leave this metric out.",
    "refusal": "Give each record a refusal (a 'refusal' key, or with_refusals).",
}


def check_fields(records: Sequence[QA], fields: Sequence[str], needed_by: str,
                 name: str = "qa_list") -> None:
    """Raise MissingQAFieldError naming the first record without one of `fields`."""
    for i, record in enumerate(records):
        if not isinstance(record, QA):
            raise TypeError(f"{name}[{i}] must be a QA, got {type(record).__name__}")
        for key in fields:
            if not getattr(record, key):
                raise MissingQAFieldError(
                    f"{needed_by} needs {key} on every record; {name}[{i}] has none (question "
                    f"{record.question!r}). {_FIELD_HINTS.get(key, '')}".rstrip())


def _is_word_tokenizer(tokenizer: Any) -> bool:
    return all(hasattr(tokenizer, a) for a in ("bos_id", "eos_id", "pad_id", "vocab_size",
                                               "encode", "decode"))


def _is_hf_tokenizer(tokenizer: Any) -> bool:
    return callable(tokenizer) and all(
        hasattr(tokenizer, a) for a in ("eos_token_id", "pad_token_id", "decode"))


class QAFormat:
    """Prompt and answer token ids of QA pairs for one tokenizer (see the module docstring).

    tokenizer: a `WordTokenizer` or a Hugging Face tokenizer. template: the plain prompt, with
    "{question}". chat: use the tokenizer's chat template (None: when it has one). system_prompt:
    a system message before the question (chat prompts only). add_bos: start a plain prompt
    with the tokenizer's BOS token (None: when it has one; a chat template places its own).

    For the WordTokenizer the ids are "<bos> Question: q Answer:" + answer + <eos>, word by word.
    For a Hugging Face tokenizer the answer's ids are the ids it gets in context (those of prompt
    text + answer after the prompt's ids), so a byte-level BPE's leading-space tokens and a
    SentencePiece tokenizer's word-start marks come out as in running text; when the prompt's
    ids are not a prefix of them (a merge across the boundary) the answer is tokenized alone.
    """

    def __init__(self, tokenizer: Any, template: str = "Question: {question} Answer:",
                 chat: bool | None = None, system_prompt: str | None = None,
                 add_bos: bool | None = None):
        if isinstance(tokenizer, QAFormat):
            raise TypeError("tokenizer is already a QAFormat; pass it as it is")
        if not isinstance(template, str) or "{question}" not in template:
            raise ValueError(f"template must be a str containing '{{question}}', got "
                             f"{template!r}")
        for name, value in (("chat", chat), ("add_bos", add_bos)):
            if value not in (None, True, False):
                raise TypeError(f"{name} must be None, True or False, got {value!r}")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise TypeError(f"system_prompt must be a str or None, got "
                            f"{type(system_prompt).__name__}")
        self.tokenizer, self.template, self.system_prompt = tokenizer, template, system_prompt
        if _is_word_tokenizer(tokenizer):
            if chat:
                raise ValueError("chat=True needs a Hugging Face tokenizer with a chat template; "
                                 "the WordTokenizer has none")
            if add_bos is False:
                raise ValueError("add_bos=False: the WordTokenizer's prompts always start "
                                 "with <bos>")
            self.kind, self.chat = "word", False
            self.bos_id, self.eos_id, self.pad_id = (tokenizer.bos_id, tokenizer.eos_id,
                                                     tokenizer.pad_id)
            self.add_bos = True
            self.vocab_size = tokenizer.vocab_size
            return
        if not _is_hf_tokenizer(tokenizer):
            raise TypeError("tokenizer must be a trustfast WordTokenizer or a Hugging Face "
                            f"tokenizer (with eos_token_id, pad_token_id), got "
                            f"{type(tokenizer).__name__}")
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if chat and not has_template:
            raise ValueError("chat=True, but the tokenizer has no chat_template")
        self.kind, self.chat = "hf", has_template if chat is None else chat
        if system_prompt is not None and not self.chat:
            raise ValueError("system_prompt is for chat prompts; this format has chat=False")
        if tokenizer.eos_token_id is None:
            raise ValueError("tokenizer has no eos_token: an answer must end with one")
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        if add_bos and self.bos_id is None:
            raise ValueError("add_bos=True, but the tokenizer has no bos_token")
        self.add_bos = self.bos_id is not None and add_bos is not False and not self.chat
        # no pad token (Llama, GPT-2): pad with EOS; padded positions are masked and unlabelled
        self.pad_id = self.eos_id if tokenizer.pad_token_id is None else int(
            tokenizer.pad_token_id)
        self.vocab_size = len(tokenizer)

    def __repr__(self) -> str:
        return (f"QAFormat({type(self.tokenizer).__name__}, kind={self.kind!r}, "
                f"chat={self.chat})")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, question: str) -> str:
        """The prompt as text (a chat prompt includes the template's special tokens)."""
        _check_str("question", question)
        if not self.chat:
            return self.template.format(question=question)
        messages = [{"role": "user", "content": question}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def prompt_ids(self, question: str) -> list[int]:
        """Token ids of the prompt that precedes an answer (and that greedy decoding extends)."""
        text = self.prompt_text(question)
        if self.kind == "word":
            return [self.bos_id, *self.tokenizer.encode(text)]
        ids = self._ids(text)  # what apply_chat_template(tokenize=True) gives for a chat prompt
        if self.add_bos:
            ids = [self.bos_id, *ids]
        return ids

    def answer_ids(self, question: str, answer: str) -> list[int]:
        """Token ids of `answer` after the prompt of `question`, then EOS."""
        _check_str("answer", answer)
        if self.kind == "word":
            return [*self.tokenizer.encode(answer), self.eos_id]
        context = self.prompt_text(question)
        full = self._ids(context + ("" if self.chat else " ") + answer)
        prefix = self._ids(context)
        if full[:len(prefix)] == prefix and len(full) > len(prefix):
            target = full[len(prefix):]
        else:
            target = self._ids(answer)
        return [*target, self.eos_id]

    def encode(self, question: str, answer: str,
               max_length: int | None = None) -> dict[str, torch.Tensor]:
        """input_ids / labels / attention_mask, each LongTensor (T,): prompt + answer + EOS,
        labels -100 on the prompt (Hugging Face causal-LM convention: the model shifts labels
        itself). A sequence longer than `max_length` raises ValueError (never truncated)."""
        prompt, target = self.prompt_ids(question), self.answer_ids(question, answer)
        ids = prompt + target
        if max_length is not None and len(ids) > max_length:
            raise ValueError(f"encoded question/answer has {len(ids)} tokens, more than "
                             f"max_length={max_length}: {question!r} / {answer!r}")
        input_ids = torch.tensor(ids, dtype=torch.long)
        labels = torch.tensor([-100] * len(prompt) + target, dtype=torch.long)
        return {"input_ids": input_ids, "labels": labels,
                "attention_mask": torch.ones_like(input_ids)}

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of generated ids, special tokens skipped, surrounding whitespace stripped
        (a byte-level BPE's first answer token carries the space after the prompt)."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def qa_format(tokenizer: Any) -> QAFormat:
    """`tokenizer` itself when it is a QAFormat, else its default QAFormat."""
    return tokenizer if isinstance(tokenizer, QAFormat) else QAFormat(tokenizer)


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")


def encode_qa(tokenizer: Any, question: str, answer: str,
              max_length: int | None = None) -> dict[str, torch.Tensor]:
    """input_ids / labels / attention_mask (LongTensors (T,)) of one QA pair: the prompt of
    `question` (labels -100), then the answer's tokens and EOS (labelled). `tokenizer` is a
    WordTokenizer, a Hugging Face tokenizer or a `QAFormat` (see `QAFormat` for the formats).
    With the WordTokenizer: "<bos> Question: {question} Answer: {answer} <eos>"."""
    return qa_format(tokenizer).encode(question, answer, max_length)


def collate(batch: Sequence[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad `encode_qa` outputs to (B, T): input_ids with `pad_id`, labels with -100,
    attention_mask with 0."""
    if len(batch) == 0:
        raise ValueError("batch must hold at least one example, got an empty batch")
    length = max(len(item["input_ids"]) for item in batch)
    fills = {"input_ids": pad_id, "labels": -100, "attention_mask": 0}
    out = {}
    for key, fill in fills.items():
        rows = torch.full((len(batch), length), fill, dtype=torch.long)
        for row, item in zip(rows, batch):
            if key not in item:
                raise ValueError(f"every batch item needs {key!r}; got keys {sorted(item)}")
            row[:len(item[key])] = item[key]
        out[key] = rows
    return out


# --- loading the users' files --------------------------------------------------------------------

LIST_KEYS = ("data", "train", "examples", "records", "rows")


def _read_records(path: str, field_name: str | None, question_key: str) -> list:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path}: the file is empty; expected JSON or JSON lines of QA records")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg != "Extra data":
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        data = None  # more than one JSON value: JSON lines (TOFU's .json files are JSON lines)
    if data is None:
        records = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {line_no} is not valid JSON ({e})") from None
        return records
    if field_name is not None:
        if not isinstance(data, dict) or field_name not in data:
            keys = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path}: field={field_name!r} is not a key of the file (it has "
                             f"{keys})")
        data = data[field_name]
    elif isinstance(data, dict) and question_key not in data:
        lists = [k for k, v in data.items() if isinstance(v, list)]
        named = [k for k in LIST_KEYS if k in lists]
        if named:
            data = data[named[0]]
        elif len(lists) == 1:
            data = data[lists[0]]
        else:
            raise ValueError(f"{path}: a JSON object without a list of records under one of "
                             f"{list(LIST_KEYS)} (keys: {sorted(data)}); pass field= to say "
                             "which key holds them")
    if isinstance(data, dict):
        data = [data]  # one record
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of QA records, got {type(data).__name__}")
    return data


def _record_field(path: str, i: int, record: dict, key: str, required: bool = False,
                  many: bool = False):
    if key not in record or record[key] is None:
        if required:
            raise ValueError(f"{path}: record {i} has no {key!r} key (its keys: "
                             f"{sorted(record)}); set question_key= / answer_key= to read "
                             "other names")
        return [] if many else None
    value = record[key]
    if many and isinstance(value, str):
        value = [value]
    ok = (isinstance(value, list) and all(isinstance(v, str) for v in value)) if many \
        else isinstance(value, str)
    if not ok:
        want = "a list of strings" if many else "a string"
        raise ValueError(f"{path}: record {i}: {key!r} must be {want}, got "
                         f"{type(value).__name__} {value!r:.80}")
    return value


def load_qa(path: str | os.PathLike, question_key: str = "question", answer_key: str = "answer",
            *, paraphrased_answer_key: str = "paraphrased_answer",
            perturbed_answer_key: str = "perturbed_answer",
            paraphrased_question_key: str = "paraphrased_question",
            refusal_key: str = "refusal", field: str | None = None) -> list[QA]:
    """QA records from a JSON or JSON-lines file in TOFU's layout (Maini et al., 2024).

    The file is read as one JSON value when it parses as one, else as JSON lines (one record per
    line; TOFU's own `.json` files are JSON lines). A JSON value is a list of records; one
    record; or an object holding the list under `field`, else under the first of "data",
    "train", "examples", "records", "rows", else under its only list-valued key.

    Each record is an object with strings under `question_key` and `answer_key` (required) and
    optionally `paraphrased_answer`, `paraphrased_question`, `refusal` (strings) and
    `perturbed_answer` (a list of strings, as in TOFU, or one string). Other keys are ignored.
    A record without a required key, or with a value of the wrong type, raises ValueError naming
    the file, the record's index, the key and the keys present; so does an empty file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"path: no such file {path!r} (a JSON or JSONL file of QA records)")
    for name, key in (("question_key", question_key), ("answer_key", answer_key)):
        if not isinstance(key, str) or not key:
            raise ValueError(f"{name} must be a non-empty str, got {key!r}")
    records = _read_records(path, field, question_key)
    if not records:
        raise ValueError(f"{path}: holds no QA records")
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: record {i} must be a JSON object, got "
                             f"{type(record).__name__}")
        get = functools.partial(_record_field, path, i, record)
        out.append(QA(question=get(question_key, True), answer=get(answer_key, True),
                      paraphrased_question=get(paraphrased_question_key),
                      paraphrased_answer=get(paraphrased_answer_key),
                      perturbed_answers=get(perturbed_answer_key, many=True),
                      refusal=get(refusal_key)))
    return out


def with_refusals(records: Sequence[QA], refusals: Sequence[str] = REFUSALS,
                  seed: int = 0) -> list[QA]:
    """`records` with a refusal drawn (seeded) from `refusals` wherever one is missing, as
    OpenUnlearning's IdkDPO data draws one of TOFU's "I don't know" answers per example."""
    if not refusals or not all(isinstance(r, str) for r in refusals):
        raise ValueError("refusals must be a non-empty sequence of strings")
    rng = random.Random(seed)
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, QA):
            raise TypeError(f"records[{i}] must be a QA, got {type(record).__name__}")
        choice = rng.choice(list(refusals))
        out.append(record if record.refusal else replace(record, refusal=choice))
    return out
