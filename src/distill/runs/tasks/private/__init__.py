"""Students without the original data, as transfer sets of a classification run:
inputs synthesised from the teacher (DeepInversion) and the noisy votes of teachers
trained on private partitions (PATE)."""
