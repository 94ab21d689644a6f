"""Techniques that are more than one loss: losses, teachers and batches wired together.

- ``cohort``: online mutual learning (``Cohort``, ``mutual_objective``);
- ``dino``: self-distillation with multi-crop views (``MultiView``, ``dino_objective``);
- ``on_policy``: the student writes the answers the teacher grades (``OnPolicy``, GKD);
- ``generation``: the teacher writes a dataset (sequence-level KD);
- ``layer_maps``: hidden-state matching between transformer layers;
- ``token_kd``: token-level KD terms through the LM heads;
- ``pruning``: pruning callbacks for compressing while distilling;
- ``inversion``, ``synthetic``: DeepInversion inputs from the teacher alone, stored as a
  resumable, checksummed transfer set;
- ``pate``: private aggregation of teacher ensembles (GNMax answers, RDP accounting).
- ``pate_dependent``: PATE's data-dependent privacy analysis of a run's votes.
"""

from distill.methods.cohort import Cohort, mutual_objective
from distill.methods.dino import MultiView, dino_objective
from distill.methods.layer_maps import hidden_state_terms, layer_map
from distill.methods.on_policy import OnPolicy
from distill.methods.pruning import GradualPruning, KeepZeros
from distill.methods.token_kd import sparse_token_kd_term, token_kd_term

__all__ = [
    "Cohort",
    "GradualPruning",
    "KeepZeros",
    "MultiView",
    "OnPolicy",
    "dino_objective",
    "hidden_state_terms",
    "layer_map",
    "mutual_objective",
    "sparse_token_kd_term",
    "token_kd_term",
]
