"""Run a language-model recipe (``task: causal_lm`` or ``masked_lm``).

The same shape as the classifier pipeline: text split into train / validation / test
blocks, a teacher (loaded, or fine-tuned once and cached), a label-only student and a
distilled student with the same initial weights, seed and budget, then all three measured
on the test blocks: perplexity (exp of the mean token cross-entropy), next-token (or
masked-token) agreement with the teacher, token accuracy, parameters, size on disk and
CPU latency per sequence. The students are also saved in Hugging Face format
(``student/``, with the tokenizer) so ``from_pretrained`` loads them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from distill import checkpoint as ckpt
from distill import teachers
from distill.cache_recipe import cache_as_teacher, cached_rows, ensure_cache, layout_for
from distill.data.text import ChatExamples, MaskedBlocks, PackedText, text_records
from distill.distributed import num_processes, on_main, process_index
from distill.engine import Distiller
from distill.generate import (
    GenerationSettings,
    generate_dataset,
    load_prompts,
    read_generations,
    uses_vllm,
)
from distill.losses import cross_entropy
from distill.measure import cpu_latency_ms, parameter_count, size_on_disk
from distill.models import hf
from distill.models.shrink import student_from_teacher
from distill.objective import Objective, Term
from distill.on_policy import OnPolicy
from distill.pipeline import (
    BASELINE_DIR,
    RECIPE_FILE,
    Log,
    _gain,
    _teacher_module,
    cached_teacher,
    epoch_steps,
    fit_and_cache_teacher,
    fit_student,
    teacher_cache_dir,
)
from distill.recipes import ModelSpec, Recipe, RecipeError, build_objective, dump_recipe
from distill.recipes.schema import TextDataSpec

HF_STUDENT_DIR = "student"
GENERATED_FILE = "generated.jsonl"
CALIBRATION_BLOCKS = 8
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TextData:
    train: Dataset
    val: Dataset
    test: Dataset
    regime: str


def _task(recipe: Recipe) -> hf.Task:
    return "causal" if recipe.task == "causal_lm" else "masked"


def _spec(recipe: Recipe) -> TextDataSpec:
    assert isinstance(recipe.data, TextDataSpec)
    return recipe.data


def tokenizer_for(recipe: Recipe) -> Any:
    """The recipe's tokenizer: ``data.tokenizer``, else the teacher's (or an ``hf:`` student's)."""
    spec = _spec(recipe)
    owner = None
    if spec.tokenizer is not None:
        source, gguf = spec.tokenizer, None
    else:
        for owner in (recipe.teacher, recipe.student):
            if owner is not None and owner.model.startswith("hf:"):
                break
        else:
            raise RecipeError(
                "data.tokenizer: no hf: teacher or student to take a tokenizer from; set "
                "data.tokenizer to hf:<id or dir>"
            )
        source, gguf = owner.model, owner.args.get("gguf_file")
    try:
        tokenizer = hf.load_tokenizer(source, gguf)
    except (OSError, ValueError, ImportError) as error:
        field = "data.tokenizer" if owner is None else "the tokenizer of " + owner.model
        raise RecipeError(f"{field}: cannot load a tokenizer ({error})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def generated_path(recipe: Recipe) -> Path:
    """Where ``generate:`` writes the teacher's answers."""
    assert recipe.generate is not None
    return recipe.generate.out or recipe.output.dir / recipe.name / GENERATED_FILE


def prepare_text(recipe: Recipe, tokenizer: Any) -> TextData:
    spec = _spec(recipe)
    try:
        if spec.source == "generated":  # the teacher's answers, checked against provenance
            records, _ = read_generations(generated_path(recipe))
        else:
            records = text_records(spec.source)
    except (FileNotFoundError, ValueError, ImportError) as error:
        raise RecipeError(f"data.source: {error}") from None
    if recipe.task == "masked_lm":
        rows: Dataset = MaskedBlocks(
            records, tokenizer, spec.seq_len, spec.mlm_probability, seed=spec.split_seed
        )
    elif spec.format == "chat":
        rows = ChatExamples(records, tokenizer, spec.seq_len)
    else:
        rows = PackedText(records, tokenizer, spec.seq_len)
    total = len(rows)  # type: ignore[arg-type]
    held = spec.test_blocks + spec.val_blocks
    if held >= total:
        raise RecipeError(
            f"data: {total} rows of {spec.seq_len} tokens, but val_blocks + test_blocks = {held}; "
            "lower them or give more text"
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(spec.split_seed))
    order_list = order.tolist()
    test = Subset(rows, order_list[: spec.test_blocks])
    val = Subset(rows, order_list[spec.test_blocks : held])
    train_ids = order_list[held:]
    if spec.max_train_blocks is not None:
        train_ids = train_ids[: spec.max_train_blocks]
    regime = (
        f"{spec.source} text, {len(train_ids):,} train / {len(val):,} validation / "
        f"{len(test):,} test rows of {spec.seq_len} tokens"
    )
    return TextData(Subset(rows, train_ids), val, test, regime)


def loader(dataset: Dataset, recipe: Recipe, train: bool) -> DataLoader:
    spec = _spec(recipe)
    return DataLoader(
        dataset,
        batch_size=spec.batch_size if train else spec.eval_batch_size,
        shuffle=train,
        num_workers=spec.num_workers,
    )


def _calibration(data: TextData) -> dict[str, torch.Tensor]:
    count = min(CALIBRATION_BLOCKS, len(data.train))  # type: ignore[arg-type]
    rows = [data.train[i] for i in range(count)]
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0] if k != "labels"}


def build_lm(
    spec: ModelSpec,
    recipe: Recipe,
    tokenizer: Any,
    *,
    teacher: nn.Module | None = None,
    data: TextData | None = None,
    where: str = "student",
) -> nn.Module:
    """The model a language-model recipe names (see ``ModelSpec``), with its weights."""
    kind, _, name = spec.model.partition(":")
    args = dict(spec.args)
    if spec.model == "teacher":
        if teacher is None or where != "student":
            raise RecipeError(f"{where}.model: only the student can be made from the teacher")
        keep = args.pop("keep", "every_other")
        select = args.pop("select", "similarity" if isinstance(keep, int) else "uniform")
        if args or select not in ("similarity", "uniform"):
            raise RecipeError(
                f"{where}.args: a student made from the teacher takes keep (a count, a list "
                "of layer indices or every_other) and select (similarity or uniform); got "
                f"{spec.args}"
            )
        calibration = _calibration(data) if select == "similarity" and data else None
        try:
            model = student_from_teacher(teacher, keep, calibration=calibration)
        except ValueError as error:
            raise RecipeError(f"{where}.args.keep: {error}") from None
    elif kind == "hf-config":
        fields = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **args}
        try:
            model = hf.model_from_config(name, _task(recipe), **fields)
        except (ValueError, TypeError, KeyError) as error:
            raise RecipeError(f"{where}.model {spec.model}: {error}") from None
    elif kind == "hf":
        dtype = args.pop("dtype", None)
        gguf_file = args.pop("gguf_file", None)
        if args or (dtype is not None and dtype not in DTYPES):
            raise RecipeError(
                f"{where}.args: hf models take gguf_file and dtype ({', '.join(DTYPES)}); "
                f"got {spec.args}"
            )
        try:
            model, _ = hf.load_hf_lm(
                spec.model, task=_task(recipe), gguf_file=gguf_file, dtype=DTYPES.get(dtype)
            )
        except (OSError, ValueError, ImportError) as error:
            raise RecipeError(f"{where}.model {spec.model}: {error}") from None
    else:
        raise RecipeError(
            f"{where}.model {spec.model!r}: a language-model recipe takes hf:<id, dir or "
            f"{' | '.join(hf.LOCAL_MODELS)}>, hf-config:<model_type>"
            + (" or teacher" if where == "student" else "")
        )
    if spec.checkpoint is not None:
        if not spec.checkpoint.exists():
            raise RecipeError(f"{where}.checkpoint {spec.checkpoint} does not exist")
        ckpt.load_weights(model, spec.checkpoint)
    return model.float() if model.dtype == torch.float16 else model


def get_lm_teacher(
    recipe: Recipe, tokenizer: Any, data: TextData, progress: bool, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher as named; with ``teacher.train`` it is first fine-tuned on the train
    blocks (label cross-entropy) and cached, keyed by everything that shapes it."""
    spec = recipe.teacher
    assert spec is not None
    model = build_lm(spec, recipe, tokenizer, where="teacher")
    if spec.train is None:
        if spec.model.startswith("hf-config:") and spec.checkpoint is None:
            raise RecipeError(
                "teacher: an hf-config model starts random; give teacher.train or a checkpoint"
            )
        log(f"teacher {spec.model}: loaded, not trained")
        return model.eval(), {"model": spec.model, "train_seconds": 0.0}
    cached = cached_teacher(recipe, lambda: model, log)
    if cached is not None:
        return cached
    return train_lm_teacher(recipe, model, data, progress, log)


def train_lm_teacher(
    recipe: Recipe, model: nn.Module, data: TextData, progress: bool, log: Log
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune (or train) the teacher with ``teacher.train`` on the train rows; cache it."""
    spec = recipe.teacher
    if spec is None or spec.train is None:
        raise RecipeError("teacher.train is not set: the recipe says nothing about how to train it")
    log(f"training the teacher {spec.model} on {len(data.train):,} rows")  # type: ignore[arg-type]
    torch.manual_seed(recipe.seed)
    info = fit_and_cache_teacher(
        recipe,
        model,
        loader(data.train, recipe, True),
        loader(data.val, recipe, False),
        progress,
        val_extras=lambda val: {"perplexity": math.exp(val["loss"])},
    )
    return model.eval(), info


def teacher_command(recipe: Recipe, progress: bool, log: Log) -> dict[str, Any]:
    """``distill teacher`` for a language-model recipe: train the teacher and cache it."""
    assert recipe.teacher is not None
    tokenizer = tokenizer_for(recipe)
    data = prepare_text(recipe, tokenizer)
    model = build_lm(recipe.teacher, recipe, tokenizer, where="teacher")
    _, info = train_lm_teacher(recipe, model, data, progress, log)
    return {**info, "cache": str(teacher_cache_dir(recipe))}


def generate_command(recipe: Recipe, *, progress: bool = True, log: Log = print) -> Path:
    """``distill generate``: the teacher answers ``generate.prompts``; returns the dataset."""
    spec = recipe.generate
    if spec is None or recipe.teacher is None:
        raise RecipeError(
            "generate: the recipe has no generate section; add `generate: {prompts: "
            "prompts.jsonl}` (see recipes/llm_seqkd.yaml)"
        )
    if recipe.teacher.train is not None:
        raise RecipeError(
            "generate: the teacher answers as loaded; drop teacher.train (fine-tune it in "
            "another recipe and give its checkpoint)"
        )
    tokenizer = tokenizer_for(recipe)
    try:
        prompts = load_prompts(spec.prompts)[: spec.max_prompts]
    except (FileNotFoundError, ValueError) as error:
        raise RecipeError(f"generate.prompts: {error}") from None
    out = generated_path(recipe)
    model_id = None
    if recipe.teacher.model.startswith("hf:") and "gguf_file" not in recipe.teacher.args:
        model_id = hf.resolve(recipe.teacher.model.removeprefix("hf:"))[0]
    settings = GenerationSettings(**spec.model_dump(include=set(GenerationSettings.model_fields)))
    teacher = None  # vLLM loads the teacher itself: not a second copy here
    if not uses_vllm(settings, model_id):
        teacher = build_lm(recipe.teacher, recipe, tokenizer, where="teacher").eval()
    log(f"generate: {recipe.teacher.model} answers {len(prompts)} prompts -> {out}")
    provenance = {
        "teacher": recipe.teacher.model,
        "teacher_args": dict(recipe.teacher.args),
        "tokenizer": getattr(tokenizer, "name_or_path", ""),
        "prompts": spec.prompts,
        "recipe": recipe.name,
    }
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
    )


def cache_command(
    recipe: Recipe, *, worker: int = 0, workers: int = 1, progress: bool = True, log: Log = print
) -> dict[str, Any]:
    """``distill cache``: run the teacher over the training and validation rows once and
    store its top-k answers (this worker's shards of them)."""
    if recipe.cache is None:
        raise RecipeError(
            "cache: the recipe has no cache section; add `cache: {top_k: 64}` (see "
            "recipes/llm_cached_kd.yaml)"
        )
    tokenizer = tokenizer_for(recipe)
    data = prepare_text(recipe, tokenizer)
    teacher, _ = get_lm_teacher(recipe, tokenizer, data, progress, log)
    teacher = teacher.eval().requires_grad_(False)
    rows = cached_rows(data.train, data.val)
    return ensure_cache(
        recipe,
        teacher,
        rows,
        layout_for(recipe, tokenizer, teacher, len(rows)),
        worker=worker,
        workers=workers,
        progress=progress,
        log=log,
    )


def evaluate_run(run_dir: Path, recipe: Recipe) -> dict[str, float]:
    """``distill eval`` for a language-model run: its saved student on the test rows."""
    folder = Path(run_dir) / HF_STUDENT_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{run_dir} holds no student/ folder; did the run finish?")
    tokenizer = tokenizer_for(recipe)
    data = prepare_text(recipe, tokenizer)
    student = hf.auto_class(_task(recipe)).from_pretrained(folder)
    metrics = Distiller(student, progress=False).evaluate(loader(data.test, recipe, False))
    return {**metrics, "perplexity": math.exp(metrics["loss"])}


def _measure(
    model: nn.Module,
    recipe: Recipe,
    data: TextData,
    teacher: nn.Module | None,
    weights: Path | None = None,
) -> dict[str, Any]:
    run = Distiller(
        model, teachers.Module(teacher) if teacher is not None else None, progress=False
    )
    metrics = run.evaluate(loader(data.test, recipe, False))
    example = data.test[0]["input_ids"]
    return {
        **metrics,
        "perplexity": math.exp(metrics["loss"]),
        "parameters": parameter_count(model),
        "size_bytes": size_on_disk(model, weights),
        "latency_ms": cpu_latency_ms(model, example, recipe.output.latency_repeats),
    }


def _train_student(
    recipe: Recipe,
    data: TextData,
    tokenizer: Any,
    teacher: nn.Module,
    *,
    objective_for,
    run_dir: Path,
    budget: int,
    eval_every: int,
    progress: bool,
    answers: teachers.Teacher | None = None,
    on_policy: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """One student; it learns from ``answers`` (e.g. a teacher cache) when given, else
    from the live ``teacher``; with ``on_policy`` it writes answers itself (GKD)."""
    torch.manual_seed(recipe.seed)  # the same initial weights for every student
    student = build_lm(recipe.student, recipe, tokenizer, teacher=teacher, data=data)
    objective = objective_for(student)
    if objective.reads_teacher and answers is None:
        answers = _teacher_module(recipe, teacher)
    rewrite = None
    if on_policy and recipe.on_policy is not None:
        spec = recipe.on_policy
        rewrite = OnPolicy(
            student,
            lam=spec.lam,
            max_new_tokens=spec.max_new_tokens,
            temperature=spec.temperature,
            top_p=spec.top_p,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            seed=recipe.seed,
        )
    _, result, seconds = fit_student(
        recipe,
        student,
        answers if objective.reads_teacher else None,
        objective,
        run_dir=run_dir,
        train_loader=loader(data.train, recipe, True),
        val_loader=loader(data.val, recipe, False),
        max_steps=budget,
        eval_every=eval_every,
        progress=progress,
        batch_transform=rewrite,
    )

    def save_hf() -> None:  # a Hugging Face folder too, loadable with from_pretrained
        student.save_pretrained(run_dir / HF_STUDENT_DIR)
        tokenizer.save_pretrained(run_dir / HF_STUDENT_DIR)

    on_main(save_hf)
    measured = _measure(student, recipe, data, teacher, run_dir / ckpt.STUDENT_FILE)
    if rewrite is not None:
        measured["on_policy_batches"] = rewrite.generated_batches
        measured["on_policy_tokens"] = rewrite.generated_tokens
    return student, {
        **measured,
        "train_seconds": seconds,
        "steps": result.steps,
        "best_step": result.best_step,
    }


def run_lm_recipe(
    recipe: Recipe, *, out_dir: Path | None = None, progress: bool = True, log: Log = print
) -> dict[str, Any]:
    """``distill run`` for language models; returns the summary it writes."""
    if recipe.teacher is None:
        raise RecipeError("teacher: a language-model recipe needs a teacher")
    run_dir = Path(out_dir) if out_dir is not None else recipe.output.dir / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    on_main(lambda: (run_dir / RECIPE_FILE).write_text(dump_recipe(recipe)))
    started = time.perf_counter()
    if recipe.generate is not None and not generated_path(recipe).exists():
        # sequence-level KD data first, by the main process
        on_main(lambda: generate_command(recipe, progress=progress, log=log))
    tokenizer = tokenizer_for(recipe)
    data = prepare_text(recipe, tokenizer)
    log(f"data: {data.regime}")
    teacher, teacher_info = get_lm_teacher(recipe, tokenizer, data, progress, log)
    teacher.eval().requires_grad_(False)

    spec = _spec(recipe)
    per_epoch = epoch_steps(len(data.train), spec.batch_size, recipe.train.grad_accum_steps)  # type: ignore[arg-type]
    budget = recipe.train.max_steps or per_epoch * (recipe.train.epochs or 1)
    if recipe.train.max_steps and recipe.train.epochs:
        budget = min(budget, per_epoch * recipe.train.epochs)
    models: dict[str, dict[str, Any]] = {
        "teacher": {
            **_measure(teacher, recipe, data, None),
            "train_seconds": teacher_info.get("train_seconds", 0.0),
        }
    }
    common = dict(budget=budget, eval_every=per_epoch, progress=progress)
    if recipe.baseline:
        log(f"label-only student {recipe.student.model}: {budget} steps")
        _, models["baseline"] = _train_student(
            recipe,
            data,
            tokenizer,
            teacher,
            objective_for=lambda student: Objective(ce=Term(cross_entropy)),
            run_dir=run_dir / BASELINE_DIR,
            **common,
        )
    terms = ", ".join(recipe.objective)
    answers = None
    if recipe.cache is not None and recipe.cache.use:
        rows = cached_rows(data.train, data.val)
        cache_info = ensure_cache(
            recipe,
            teacher,
            rows,
            layout_for(recipe, tokenizer, teacher, len(rows)),
            worker=process_index(),  # every process builds its share of the shards
            workers=num_processes(),
            progress=progress,
            log=log,
            together=True,
        )
        answers = cache_as_teacher(recipe, tokenizer)
        log(f"the distilled student learns from the teacher cache {cache_info['folder']}")
    log(f"distilled student {recipe.student.model}: {budget} steps, objective {terms}")
    _, models["student"] = _train_student(
        recipe,
        data,
        tokenizer,
        teacher,
        objective_for=lambda student: build_objective(
            recipe.objective, per_epoch, student, teacher, sparse_teacher=answers is not None
        ),
        run_dir=run_dir,
        answers=answers,
        on_policy=True,
        **common,
    )
    summary = {
        "name": recipe.name,
        "description": recipe.description,
        "task": recipe.task,
        "dataset": f"text ({spec.source})",
        "regime": data.regime,
        "teacher_model": recipe.teacher.model,
        "student_model": recipe.student.model,
        "objective": {name: term.loss for name, term in recipe.objective.items()},
        "steps": budget,
        "models": models,
        "gain_over_baseline": _gain(models),
        "perplexity_ratio": (
            models["student"]["perplexity"] / models["baseline"]["perplexity"]
            if "baseline" in models
            else None
        ),
        "gap_closed": None,
        "seconds": time.perf_counter() - started,
    }
    from distill.pipeline import _write_summary

    _write_summary(run_dir, summary)
    return summary
