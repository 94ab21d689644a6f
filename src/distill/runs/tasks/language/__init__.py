"""``task: causal_lm`` and ``task: masked_lm``: text, Hugging Face teachers and students,
teacher-written data, on-policy answers and speculative decoding."""
