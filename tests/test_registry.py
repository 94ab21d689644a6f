"""The loss registry: every public loss has one entry, and what an entry says a loss reads
is what its signature reads; recipes, the cache and the command line take names from it."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from torch import nn

from distill import losses, teachers
from distill.losses.registry import INPUT_NAMES, LOSSES, RECIPE_LOSSES, loss_info
from distill.objective import LossInputs, Objective, Term, temperature_clash
from distill.recipes import RecipeError, load_recipe
from distill.training import Distiller

RECIPES = Path(__file__).parents[1] / "recipes"


def test_every_public_loss_is_registered_under_its_own_name():
    public = {name for name in losses.__all__ if name.islower()}
    assert public == set(LOSSES)
    for name, info in LOSSES.items():
        assert info.fn is getattr(losses, name)
        assert info.summary  # the first docstring line, for `distill losses`


def test_the_registry_is_the_one_list_of_what_a_loss_may_read():
    """A term's inputs (``objective.LossInputs``) are the registry's ``INPUT_NAMES``, in
    its order."""
    assert [f.name for f in dataclasses.fields(LossInputs)] == list(INPUT_NAMES)


def test_the_recipe_and_the_run_check_temperature_agreement_the_same_way():
    held = {"kd": (("teacher_logits",), 2.0), "ce": (("labels",), 4.0)}
    assert temperature_clash(held, 2.0) is None
    assert temperature_clash(held, 1.0) == ("kd", 2.0)
    assert temperature_clash({"kd": (("teacher_topk",), None)}, 1.0) is None  # a schedule


def test_what_an_entry_reads_is_its_signature():
    for info in LOSSES.values():
        params = inspect.signature(info.fn).parameters
        assert info.reads == [n for n in INPUT_NAMES if n in params]
        assert info.reads_teacher == any(n.startswith("teacher_") for n in params)
    assert loss_info("lm_head_kd").lm_heads and loss_info("lm_head_kd").reads_teacher
    assert not loss_info("kl").lm_heads and loss_info("kl").divergence
    assert not loss_info("cross_entropy").reads_teacher
    for info in LOSSES.values():  # a sparse form is itself a registered loss
        assert info.sparse_form is None or info.sparse_form in LOSSES
    assert "lm_head_sparse_kd" not in RECIPE_LOSSES  # chosen for a cache, not named
    with pytest.raises(KeyError, match="known:"):
        loss_info("kll")


def test_recipes_accept_the_registered_names_only():
    recipe = RECIPES / "mnist1d_kd.yaml"
    for name in ("dkd", "dist", "logit_standardized_kl"):
        assert load_recipe(recipe, [f"objective.kd.loss={name}"]).objective["kd"].loss == name
    with pytest.raises(RecipeError, match=r"objective\.kd\.loss"):
        load_recipe(recipe, ["objective.kd.loss=lm_head_sparse_kd"])


def test_an_ensemble_is_read_at_its_own_temperature():
    """The mix of probabilities holds at the ensemble's temperature only: a KD term at
    another fixed temperature is refused, in Python and in recipes."""
    members = [nn.Linear(4, 3), nn.Linear(4, 3)]
    ensemble = teachers.Ensemble(members, "mean", temperature=2.0)
    student = nn.Linear(4, 3)
    at = {t: Objective(kd=Term(losses.kl, temperature=t)) for t in (2.0, 4.0)}
    Distiller(student, ensemble, at[2.0])
    with pytest.raises(ValueError, match=r"temperature 4, but .* hold at 2 "):
        Distiller(student, ensemble, at[4.0])
    routed = teachers.Ensemble(members, "route", temperature=2.0)
    Distiller(student, routed, at[4.0])  # routing passes logits on as they are

    recipe = RECIPES / "mnist1d_ensemble.yaml"
    load_recipe(recipe)
    with pytest.raises(RecipeError, match=r"teacher.temperature 2 .* objective.kd.temperature 4"):
        load_recipe(recipe, ["objective.kd.temperature=4"])
