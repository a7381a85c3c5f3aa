"""LLM unlearning on Hugging Face causal LMs: losses (GA, GradDiff, GA+KL, NPO, SimNPO, IdkDPO,
RMU; OpenUnlearning's names accepted) on the memory-lean `trustfast.ops.sequence_nll`, trainers,
and TOFU-style metrics, on the built-in facts or the users' own models and QA files.

Modules, each importing only those above it in this list:

  losses            the unlearning losses, METHODS and their OpenUnlearning names
  optim             AdamW / 8-bit AdamW, and stepping the optimizer inside the backward
  checkpointing     activation checkpointing, and run checkpoints of the single-process loop
  models            tiny_llama, load_causal_lm (a local HF folder), save_pretrained
  metrics           ROUGE-L, truth ratio, forget quality, Min-K% MIA, PrivLeak, model utility
  train             finetune, unlearn, the shared loop (train_epochs), encode_examples
  memory            the memory model of one unlearning step, and its measurement
  launch            the same loop under DeepSpeed ZeRO (init, config, full weights)

The experiment (built-in facts or the users' own model and QA files, every method, the scores,
DeepSpeed when the config has `zero`) is `trustfast llm-unlearn` (trustfast.experiments.llm);
`python -m trustfast.llm.train ...` is the same command.

Prompts and answers are tokenized by `trustfast.data.qa.QAFormat` (the WordTokenizer or any
Hugging Face tokenizer, its chat template when it has one); `trustfast.data.qa.load_qa` reads
TOFU-layout JSON / JSONL files.
"""
