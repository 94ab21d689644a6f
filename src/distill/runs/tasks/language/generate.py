"""The teacher-writes-the-data stage (sequence-level KD): ``distill generate``, or ``distill
run`` when ``generate.out`` is missing; an existing dataset is checked against the recipe
so that answers made with other settings are never trained on unnoticed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import RecipeError
from distill.methods.generated_data import (
    generate_dataset,
    provenance_path,
    read_generations,
    write_rows,
)
from distill.methods.generation import (
    ANSWER_SETTINGS,
    GenerationSettings,
    load_prompts,
    uses_vllm,
)
from distill.methods.verify import answer_verifier
from distill.models import hf
from distill.recipes import Recipe
from distill.runs.tasks.language.models import (
    build_teacher,
    domain_reader,
    text_spec,
    tokenizer_for,
)
from distill.runs.workdir import Log
from distill.training.distributed import on_main

GENERATED_FILE = "generated.jsonl"


def generated_path(recipe: Recipe) -> Path:
    """Where ``generate:`` writes the teacher's answers."""
    assert recipe.generate is not None
    return recipe.generate.out or recipe.output.dir / recipe.name / GENERATED_FILE


def ensure_generated(recipe: Recipe, progress: bool, log: Log) -> None:
    """The teacher's answers: written now (by the main process) when missing, else checked
    against the recipe's generation settings."""
    path = generated_path(recipe)
    if not path.exists():
        on_main(lambda: generate_teacher_answers(recipe, progress=progress, log=log))
        return
    differences = settings_differences(recipe, provenance_path(path))
    if differences:
        shown = "; ".join(
            f"{field} {there!r} there, {here!r} here" for field, there, here in differences
        )
        raise RecipeError(
            f"generate.out: {path} was written with other settings ({shown}); run distill "
            "generate to answer again with these (it replaces the file), point generate.out "
            "elsewhere, or restore the settings"
        )


def _plain(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def settings_differences(recipe: Recipe, provenance: Path) -> list[tuple[str, Any, Any]]:
    """(recipe field, value in the dataset's provenance, value in the recipe) for every
    setting that shapes the answers and differs; none when the provenance is missing
    (reading the dataset reports that)."""
    spec, teacher = recipe.generate, recipe.teacher
    assert spec is not None and teacher is not None
    if not provenance.exists():
        return []
    meta = json.loads(provenance.read_text(encoding="utf-8"))
    pairs = {
        "teacher.model": ("teacher", teacher.model),
        "teacher.args": ("teacher_args", dict(teacher.args)),
        "teacher.checkpoint": ("teacher_checkpoint", str(teacher.checkpoint or "")),
        "generate.prompts": ("prompts", spec.prompts),
        "generate.max_prompts": ("max_prompts", spec.max_prompts),
    }
    found = [
        (field, meta[key], _plain(value))
        for field, (key, value) in pairs.items()
        if key in meta and meta[key] != _plain(value)
    ]
    settings = meta.get("settings", {})
    found += [
        (f"generate.{name}", settings[name], _plain(getattr(spec, name)))
        for name in ANSWER_SETTINGS
        if name in settings and settings[name] != _plain(getattr(spec, name))
    ]
    verification = meta.get("verification")
    if (verification is None) != (spec.verify is None):
        found.append(
            ("generate.verify", "set" if verification else None, "set" if spec.verify else None)
        )
    elif verification is not None and spec.verify is not None:
        found += [
            (f"generate.verify.{name}", verification[name], _plain(value))
            for name, value in spec.verify.model_dump().items()
            if name in verification and verification[name] != _plain(value)
        ]
    return found


def generate_teacher_answers(recipe: Recipe, *, progress: bool = True, log: Log = print) -> Path:
    """``distill generate``: the teacher answers ``generate.prompts``; returns the dataset."""
    spec = recipe.generate
    if spec is None or recipe.teacher is None:
        raise RecipeError(
            "generate: the recipe has no generate section; add `generate: {prompts: "
            "prompts.jsonl}` (see recipes/llm_seqkd.yaml)"
        )
    try:
        prompts = load_prompts(spec.prompts)[: spec.max_prompts]
    except (FileNotFoundError, ValueError) as error:
        raise RecipeError(f"generate.prompts: {error}") from None
    if recipe.teacher.members:  # each prompt answered by its own member
        return answer_by_member(recipe, prompts, progress=progress, log=log)
    return answer_prompts(recipe, prompts, generated_path(recipe), progress=progress, log=log)


def answer_prompts(
    recipe: Recipe, prompts: list[dict[str, Any]], out: Path, *, progress: bool, log: Log
) -> Path:
    """The recipe's one teacher answers ``prompts`` into the dataset ``out`` (resumable)."""
    spec, teacher_spec = recipe.generate, recipe.teacher
    assert spec is not None and teacher_spec is not None
    if teacher_spec.train is not None:
        raise RecipeError(
            "generate: the teacher answers as loaded; drop teacher.train (fine-tune it in "
            "another recipe and give its checkpoint)"
        )
    tokenizer = tokenizer_for(recipe)
    model_id = None
    if teacher_spec.model.startswith("hf:") and "gguf_file" not in teacher_spec.args:
        model_id = hf.resolve(teacher_spec.model.removeprefix("hf:"))[0]
    settings = GenerationSettings(**spec.model_dump(include=set(GenerationSettings.model_fields)))
    teacher = None  # vLLM loads the teacher itself: not a second copy here
    if not uses_vllm(settings, model_id):
        teacher = build_teacher(recipe, tokenizer).eval()
    log(f"generate: {teacher_spec.model} answers {len(prompts)} prompts -> {out}")
    provenance = {
        "teacher": teacher_spec.model,
        "teacher_args": dict(teacher_spec.args),
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "teacher_checkpoint": str(teacher_spec.checkpoint or ""),
        "prompts": spec.prompts,
        "max_prompts": spec.max_prompts,
        "recipe": recipe.name,
    }
    verify = spec.verify
    if verify is not None:
        missing = [p["id"] for p in prompts if "answer" not in p]
        if missing:
            raise RecipeError(
                f"generate.verify: prompts {missing[:3]} in {spec.prompts} have no 'answer' to "
                "check the teacher against; add one per row or drop generate.verify"
            )
    return generate_dataset(
        teacher,
        tokenizer,
        prompts,
        settings,
        out,
        provenance,
        model_id=model_id,
        progress=progress,
        log=log,
        verifier=None if verify is None else answer_verifier(verify),
        keep="best" if verify is None else verify.keep,
        verification=None if verify is None else verify.model_dump(exclude={"keep"}),
    )


def answer_by_member(
    recipe: Recipe, prompts: list[dict[str, Any]], *, progress: bool, log: Log
) -> Path:
    """``generate`` with a routed teacher: each prompt answered by its member
    (``data.domain_column``, ``data.domain_rules``, ``data.default_domain``), each member's
    answers written (and resumed) as a dataset of its own, then gathered into one with each
    row's ``teacher``, its domain (in ``data.domain_column`` too, so training routes the
    row the same way); the provenance lists the members and their rows."""
    spec, teacher = recipe.generate, recipe.teacher
    assert spec is not None and teacher is not None and teacher.members is not None
    member_of = domain_reader(recipe)
    assert member_of is not None  # the recipe routes (a mixture does not generate)
    out, column = generated_path(recipe), text_spec(recipe).domain_column
    rows, members = [], {}
    for index, member in enumerate(teacher.members):
        domain = str(member.domain)
        mine = [p for p in prompts if member_of(p) == index]
        members[domain] = {"model": member.model, "rows": 0}
        if not mine:
            continue
        path = out.with_name(f"{out.stem}.{domain}{out.suffix}")
        log(f"generate: teacher.members[{index}] ({domain}) answers {len(mine)} prompts")
        alone = recipe.model_copy(update={"teacher": member})
        answer_prompts(alone, mine, path, progress=progress, log=log)
        answered = read_generations(path)[0]
        tag = {"teacher": domain} | ({column: domain} if column else {})
        rows += [{**row, **tag} for row in answered]
        members[domain]["rows"] = len(answered)
    provenance = {
        "teacher": teacher.model,
        "members": members,
        "prompts": spec.prompts,
        "max_prompts": spec.max_prompts,
        "recipe": recipe.name,
    }
    return write_rows(out, rows, provenance)
