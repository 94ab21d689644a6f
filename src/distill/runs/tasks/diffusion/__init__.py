"""``task: diffusion``: step distillation of a sampler (progressive, consistency)."""
