"""LLM unlearning on Hugging Face causal LMs: losses (GA, GradDiff, GA+KL, NPO, SimNPO, IdkDPO,
RMU) on the memory-lean `trustfast.ops.sequence_nll`, a trainer, and TOFU-style metrics."""
