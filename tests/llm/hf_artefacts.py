"""Offline Hugging Face artefacts for the LLM tests: WordLevel and byte-level BPE
`PreTrainedTokenizerFast`s built with the `tokenizers` library over the built-in facts, and a
tiny `LlamaForCausalLM` from a config. Nothing is downloaded."""

from __future__ import annotations

import torch

from trustfast.data.facts import WordTokenizer, make_facts

# A minimal chat template in the style of Llama-3's: a header per turn, an end-of-turn token,
# and an assistant header as the generation prompt.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start> {{ m['role'] }} <sep> {{ m['content'] }} "
    "<end> {% endfor %}{% if add_generation_prompt %}<start> assistant <sep> {% endif %}"
)
CHAT_TOKENS = ["<start>", "<sep>", "<end>"]


def facts_and_word_tokenizer(n_people: int = 20, seed: int = 0):
    facts = make_facts(n_people, seed=seed)
    return facts, WordTokenizer(facts.texts())


def word_level_tokenizer(word: WordTokenizer, chat: bool = False, pad: bool = True):
    """A PreTrainedTokenizerFast with `word`'s vocabulary and ids, built from scratch (not with
    `WordTokenizer.to_hf`). chat: add the chat template and its special tokens (new ids after
    the vocabulary). pad=False: no pad token."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel(vocab=dict(word.stoi), unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[?.,']"), behavior="isolated")])
    kwargs = {"pad_token": "<pad>"} if pad else {}
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>",
                                  unk_token="<unk>", clean_up_tokenization_spaces=True, **kwargs)
    if chat:
        tok.add_special_tokens({"additional_special_tokens": CHAT_TOKENS})
        tok.add_tokens(["user", "assistant"])
        tok.chat_template = CHAT_TEMPLATE
    return tok


def byte_level_bpe_tokenizer(texts, vocab_size: int = 400):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts` (leading spaces are part of
    the tokens, so an answer's ids depend on its context)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    backend.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")


def tiny_llama_for(vocab_size: int, seed: int = 0, tie: bool = False, double: bool = True):
    from trustfast.llm.models import tiny_llama

    model = tiny_llama(vocab_size, hidden_size=32, seed=seed, tie_word_embeddings=tie,
                       max_position_embeddings=128)
    return (model.double() if double else model).eval()


def perturb_(model, seed: int = 1, scale: float = 0.5) -> None:
    """Random-init Llamas answer with near-uniform logits; spread them so greedy decoding and
    the metrics have distinct values to compare."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
