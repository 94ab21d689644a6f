"""Loss functions: pure functions on tensors, each with its formula and paper.

A loss's parameter names say what it reads (``student_logits``, ``teacher_logits``,
``teacher_topk``, ``labels``, ``mask``, ``student_features``, ``teacher_features``,
``text``, ``example_weight``); an objective term uses those names to feed it.
``losses.registry`` names them for recipes.
"""

from distill.losses.clip import clip_affinity, clip_contrastive, clip_embedding, clip_relational
from distill.losses.cross_tokenizer import cross_tokenizer_kd, uld
from distill.losses.diffusion import (
    consistency_distillation,
    denoising,
    progressive_distillation,
)
from distill.losses.features import (
    attention_transfer,
    cosine_embedding,
    hint,
    pkt,
    rkd_angle,
    rkd_distance,
)
from distill.losses.logits import (
    cross_entropy,
    dist,
    dkd,
    jsd,
    kl,
    logit_standardized_kl,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
    tvd,
)
from distill.losses.mutual import mutual_learning
from distill.losses.registry import LOSSES, LossInfo
from distill.losses.selfsup import byol, dino
from distill.losses.sparse import sparse_divergence, sparse_kl
from distill.losses.tokens import lm_head_kd, lm_head_sparse_kd

__all__ = [
    "LOSSES",
    "LossInfo",
    "attention_transfer",
    "byol",
    "clip_affinity",
    "clip_contrastive",
    "clip_embedding",
    "clip_relational",
    "consistency_distillation",
    "cosine_embedding",
    "cross_entropy",
    "cross_tokenizer_kd",
    "denoising",
    "dino",
    "dist",
    "dkd",
    "hint",
    "jsd",
    "kl",
    "lm_head_kd",
    "lm_head_sparse_kd",
    "logit_standardized_kl",
    "mutual_learning",
    "pkt",
    "progressive_distillation",
    "reverse_kl",
    "rkd_angle",
    "rkd_distance",
    "skew_kl",
    "skew_reverse_kl",
    "sparse_divergence",
    "sparse_kl",
    "tvd",
    "uld",
]
