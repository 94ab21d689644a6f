"""Checks of recipe sections that only make sense together (``schema.Recipe`` runs them):
a data-free transfer set (``data.synthetic``), PATE (``pate``), a teacher with its own
tokenizer (``teacher.tokenizer``) and a teacher on an inference server (``teacher.model:
served:<url>``), each against the rest of the recipe. Each raises
``ValueError`` naming the field."""

from __future__ import annotations

from typing import Any

from distill.losses.registry import loss_info

Recipe = Any  # schema.Recipe, which imports this module


def refuse_extras(recipe: Recipe, field: str, extras: dict[str, bool]) -> None:
    """Refuse, naming them, the sections not built together with ``field`` yet: those in
    ``extras`` and the language-model stages every such teacher lacks."""
    extras = {**extras, "generate": recipe.generate is not None,
              "on_policy": recipe.on_policy is not None, "compress": bool(recipe.compress),
              "search": recipe.search is not None,
              "student.model teacher": recipe.student.model == "teacher"}  # fmt: skip
    if any(extras.values()):
        found = ", ".join(name for name, on in extras.items() if on)
        raise ValueError(f"{field}: not built with {found} yet; drop them")


def check_cross_tokenizer(recipe: Recipe) -> None:
    teacher = recipe.teacher
    crossed = teacher is not None and teacher.tokenizer is not None
    reading = [n for n, t in recipe.objective.items() if t.loss == "cross_tokenizer_kd"]
    if not crossed:
        if reading:
            raise ValueError(
                f"objective.{reading[0]}: cross_tokenizer_kd needs teacher.tokenizer (the "
                "teacher's own tokenizer) and data.tokenizer (the student's)"
            )
        return
    assert teacher is not None
    if recipe.task != "causal_lm" or getattr(recipe.data, "tokenizer", None) is None:
        raise ValueError(
            "teacher.tokenizer: cross-tokenizer KD is for task causal_lm with "
            "data.tokenizer set to the student's tokenizer"
        )
    refuse_extras(
        recipe, "teacher.tokenizer", {"teacher.train": teacher.train is not None,
                                      "cache": recipe.cache is not None},
    )  # fmt: skip
    for name, term in recipe.objective.items():
        if loss_info(term.loss).reads_teacher and term.loss != "cross_tokenizer_kd":
            raise ValueError(
                f"objective.{name}: {term.loss} compares logits position by position, "
                "but the teacher has another tokenizer; use {loss: cross_tokenizer_kd}"
            )


SERVED = "served:"
SERVED_ARGS = {
    "model", "top_k", "rows_per_request", "concurrency", "timeout", "retries", "api_key_env",
}  # fmt: skip


def check_served(recipe: Recipe) -> None:
    teacher = recipe.teacher
    if teacher is None or not teacher.model.startswith(SERVED):
        return
    url = teacher.model.removeprefix(SERVED)
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"teacher.model: served:<http(s) url of the API>, got {teacher.model!r}")
    if recipe.task != "causal_lm":
        raise ValueError("teacher.model served: is for task causal_lm")
    if "api_key" in teacher.args:
        raise ValueError(
            "teacher.args.api_key: a key is never written in a recipe (the recipe is copied "
            "into the run, its summary and model card); put it in an environment variable "
            "and name that: teacher.args.api_key_env: VLLM_API_KEY"
        )
    variable = teacher.args.get("api_key_env")
    if variable is not None and not (isinstance(variable, str) and variable.isidentifier()):
        raise ValueError(
            f"teacher.args.api_key_env: the name of an environment variable, got {variable!r}"
        )
    unknown = sorted(set(teacher.args) - SERVED_ARGS)
    if unknown:
        raise ValueError(
            f"teacher.args: a served teacher takes {', '.join(sorted(SERVED_ARGS))}; got {unknown}"
        )
    refuse_extras(
        recipe, "teacher.model (served)", {"teacher.train": teacher.train is not None,
                                           "teacher.checkpoint": teacher.checkpoint is not None,
                                           "teacher.tokenizer": teacher.tokenizer is not None},
    )  # fmt: skip
    top_k = teacher.args.get("top_k")
    if recipe.cache is not None and (
        recipe.cache.top_k is None or top_k not in (None, recipe.cache.top_k)
    ):
        raise ValueError(
            "cache.top_k: a served teacher answers with its top-k log-probs; give cache.top_k "
            f"(and teacher.args.top_k, if set, the same: now {top_k})"
        )
    for name, term in recipe.objective.items():
        info = loss_info(term.loss)
        if info.reads_teacher and not info.lm_heads:
            raise ValueError(
                f"objective.{name}: a served teacher gives top-k log-probs, not logits or "
                f"features; use {{loss: lm_head_kd}} (read as its sparse form)"
            )
        if info.reads_teacher and term.temperature not in (None, 1, 1.0):
            raise ValueError(
                f"objective.{name}.temperature: a served teacher answers at temperature 1 (the "
                "server's log-probs); set 1.0"
            )


def check_synthetic(recipe: Recipe) -> None:
    synthetic = getattr(recipe.data, "synthetic", None)
    if synthetic is None:
        return
    if recipe.task != "classification" or recipe.teacher is None:
        raise ValueError("data.synthetic inverts the teacher of a classification recipe")
    if recipe.teacher.model in ("ensemble", "ema"):
        raise ValueError(f"data.synthetic inverts one teacher, not {recipe.teacher.model}")
    if recipe.cache is not None or recipe.search is not None or recipe.pate is not None:
        raise ValueError("data.synthetic: drop cache, search and pate (not built together)")
    for name, term in recipe.objective.items():
        if "labels" in loss_info(term.loss).reads:
            raise ValueError(
                f"objective.{name}: the synthetic transfer set has no labels, so "
                f"{term.loss} has nothing to read; learn from the teacher only"
            )


def check_pate(recipe: Recipe) -> None:
    if recipe.pate is None:
        return
    teacher = recipe.teacher
    if recipe.task != "classification" or teacher is None or teacher.train is None:
        raise ValueError(
            "pate: set teacher (model, args, train) of a classification recipe: each "
            "partition trains its own copy"
        )
    if teacher.model in ("ensemble", "ema") or teacher.checkpoint is not None:
        raise ValueError("pate: teacher is one model to train per partition")
    clashes = {
        "data.labeled": recipe.data.labeled is not None,  # type: ignore[union-attr]
        "baseline": recipe.baseline,
        "cache": recipe.cache is not None,
        "search": recipe.search is not None,
        "assistant": recipe.assistant is not None,
        "peers": recipe.peers > 1,
        "generations": recipe.generations > 1,
    }
    if any(clashes.values()):
        found = ", ".join(name for name, clash in clashes.items() if clash)
        raise ValueError(f"pate: drop {found} (the student learns only the noisy answers)")
    for name, term in recipe.objective.items():
        if loss_info(term.loss).reads_teacher:
            raise ValueError(
                f"objective.{name}: with pate the student learns only the answered labels "
                "(the teachers' outputs are private); use {loss: cross_entropy}"
            )
    for field, train in (("teacher.train", teacher.train), ("train", recipe.train)):
        if train.select_metric is not None:
            raise ValueError(
                f"{field}.select_metric: the validation labels are private data that the "
                f"reported ε does not cover; set {field}.select_metric: null (the last step)"
            )
