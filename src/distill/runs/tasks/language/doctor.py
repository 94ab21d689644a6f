"""``distill doctor`` on a language-model recipe (``causal_lm``, ``masked_lm``): the checks
LLM distillation needs, each measured on a few batches of the distilled student's rows.

    vocabulary        data, teacher and student speak one vocabulary (or cross-tokenizer KD)
    chat_template     prompts rendered in the models' own template; answers end in a stop token
    truncation        chat rows fit data.seq_len with their answers whole
    top_k_mass        what a top-k cache or a served teacher keeps of the teacher's mass
    temperature       how soft the teacher's next-token targets are at the KD temperature
    sampling_temperature  generated or on-policy answers vs the token term's target
    teacher_mode      the teacher answers the same batch the same way twice
    accumulation      one step over micro-batches equals one batch of the same rows
    teacher_cost      the teacher's forward per token vs the student's step; when a cache pays

The teacher is loaded (or trained and cached) as ``distill run`` would; the student is the
recipe's at its initial weights.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from distill import teachers
from distill.batch import Batch, as_batch, logits_of
from distill.cache.layout import narrowest_id_dtype
from distill.data.text import is_chat_record, render_chat
from distill.doctor.checks import Finding, temperature_check
from distill.doctor.lm_checks import (
    accumulation_check,
    lm_teacher_cost_check,
    sampling_temperature_check,
    teacher_mode_check,
    token_mask,
    top_k_mass_check,
)
from distill.doctor.members import member_temperature_check
from distill.doctor.tokenizers import template_check, truncation_check, vocabulary_check
from distill.losses.registry import loss_info
from distill.models import hf
from distill.models.lora import with_lora
from distill.recipes import Recipe
from distill.runs.fitting import recipe_objective, step_budget, steps_per_epoch
from distill.runs.tasks.language.data import TextData, source_records
from distill.runs.tasks.language.models import text_spec, tokenizer_source

Log = Callable[[str], None]
BATCHES = 4  # the few batches the checks read
POSITIONS = 1024  # next-token distributions kept for the checks that read full logits
COMPACT_BYTES_PER_ENTRY = 2.5  # benchmarks/results/teacher_cache.md, k = 64


def head_rows(model: nn.Module) -> int | None:
    """The rows of a language model's output head (None: not a local model)."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is not None:
        return int(head.weight.shape[0])
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def own_tokenizers(recipe: Recipe, data: TextData, notes: list[str]) -> dict[str, Any]:
    """Each model's own tokenizer where it is not the one the data were made with (each
    member of a mixture or routed teacher too: they are checked against each other
    through the data's tokenizer)."""
    teacher, student = recipe.teacher, recipe.student
    assert teacher is not None
    source = tokenizer_source(recipe)[0]
    own: dict[str, Any] = {}
    if data.teacher_tokenizer is not None:
        own["teacher"] = data.teacher_tokenizer
    members = [(f"teacher.members[{i}]", m) for i, m in enumerate(teacher.members or [])]
    for role, model in (("teacher", teacher), ("student", student), *members):
        if role in own or model is None or not model.model.startswith("hf:"):
            continue
        if model.model == source:
            continue
        try:
            own[role] = hf.load_tokenizer(model.model, model.args.get("gguf_file"))
        except (OSError, ValueError, ImportError) as error:
            notes.append(f"The {role}'s own tokenizer could not be read ({error})")
    return own


def kd_term(recipe: Recipe) -> tuple[str | None, Any]:
    """(name, spec) of the first term that reads the teacher (None, None without one)."""
    for name, term in recipe.objective.items():
        if loss_info(term.loss).reads_teacher:
            return name, term
    return None, None


def teacher_distribution(
    teacher: nn.Module, live: teachers.Teacher, batches: list[Batch], vocabulary: int, seed: int
) -> tuple[Tensor | None, Tensor | None, float | None]:
    """(next-token logits at up to POSITIONS counted positions, the served top-k's kept mass
    per position, the mean mass on ids beyond ``vocabulary``) over ``batches``."""
    generator = torch.Generator().manual_seed(seed)
    per_batch = math.ceil(POSITIONS / max(len(batches), 1))
    if teachers.is_remote(teacher):
        kept = [live(b).topk.logprobs.float().logsumexp(-1)[token_mask(b)].exp() for b in batches]  # type: ignore[union-attr]
        return None, torch.cat(kept), None
    picked, padded = [], []
    with torch.no_grad():
        for batch in batches:
            logits = logits_of(batch.run(teacher)).float()[token_mask(batch)]
            order = torch.randperm(logits.shape[0], generator=generator)[:per_batch]
            picked.append(logits[order])
            if logits.shape[-1] > vocabulary:
                padded.append(F.softmax(logits, -1)[:, vocabulary:].sum(-1))
    mass = float(torch.cat(padded).mean()) if padded else None
    return torch.cat(picked), None, mass


def member_distributions(
    teacher: teachers.EnsembleModel, batches: list[Batch], vocabulary: int, seed: int
) -> list[Tensor]:
    """Each member's next-token logits (``teacher_distribution``'s sample) on the rows it
    answers: its own when routed, all of them in a mixture."""
    found = []
    for index, member in enumerate(teacher.members):
        mine = batches
        if teacher.combine == "route":
            mine = [b.select((b.meta["domain"] == index).nonzero().squeeze(1)) for b in batches]
            mine = [b for b in mine if b.size()]
        logits = teacher_distribution(member, None, mine, vocabulary, seed)[0] if mine else None  # type: ignore[arg-type]
        found.append(torch.empty(0) if logits is None else logits)
    return found


def chat_lengths(recipe: Recipe, tokenizer: Any, stops: set[int], sample: int):
    """((prompt, whole) token counts of up to ``sample`` chat rows, the share of answers
    holding a stop token); (None, None) for packed text."""
    if text_spec(recipe).format != "chat" or recipe.task != "causal_lm":
        return None, None
    records = [r for r in source_records(recipe) if is_chat_record(r)][:sample]
    rendered = [render_chat(r, tokenizer) for r in records]
    stopping = [any(t in stops for t in full[len(prompt) :]) for prompt, full in rendered]
    lengths = [(len(prompt), len(full)) for prompt, full in rendered]
    return lengths, sum(stopping) / max(len(stopping), 1)


def stop_ids(tokenizer: Any, student: nn.Module) -> set[int]:
    """The tokens generation stops on: the eos token and the student's generation config's."""
    ids = {tokenizer.eos_token_id} - {None}
    config = getattr(student, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids |= set(extra if isinstance(extra, list) else [extra]) - {None}
    return ids


def cache_bytes_per_token(recipe: Recipe, teacher: nn.Module, vocabulary: int) -> float:
    """What the recipe's cache (or a top-64 float16 one) stores per token."""
    cache = recipe.cache
    if cache is not None and cache.hidden_states:
        return 2.0 * getattr(getattr(teacher, "config", None), "hidden_size", 0)
    if cache is not None and cache.top_k is None:
        return 2.0 * vocabulary
    k = cache.top_k if cache is not None and cache.top_k else 64
    if cache is not None and cache.encoding == "compact":
        return COMPACT_BYTES_PER_ENTRY * k
    logprob = 4 if cache is not None and cache.logprob_dtype == "float32" else 2
    return float(k * (narrowest_id_dtype(vocabulary).itemsize + logprob))


def diagnose_language(
    task: Any, *, sample: int, progress: bool, log: Log
) -> tuple[list[Finding], list[str]]:
    """The language-model checks' findings and notes."""
    recipe = task.recipe
    data = task.prepare(progress, log)
    task.preflight()
    teacher, _ = task.teacher(progress, log)
    torch.manual_seed(recipe.seed)
    # with student.peft's adapters: the timing trains what the run will train
    student = with_lora(task.build_student(recipe.student, teacher), recipe.student)
    live = task.live_teacher(teacher)
    remote = teachers.is_remote(teacher)  # answers with its top-k, not logits
    tokenizer, notes = data.tokenizer, []
    size = recipe.data.batch_size  # type: ignore[union-attr]
    rows = itertools.islice(DataLoader(data.student_train, batch_size=size), BATCHES)
    batches = [as_batch(raw) for raw in rows]  # the first training micro-batches, unshuffled
    log(f"doctor: {len(batches)} batches of up to {size} rows")
    own = own_tokenizers(recipe, data, notes)
    name, term = kd_term(recipe)
    temperature = None
    if term is not None:
        temperature = float(term.temperature) if isinstance(term.temperature, (int, float)) else 1.0
    cross = data.teacher_tokenizer is not None
    logits, served_mass, padded = (None, None, None)
    if cross:
        notes.append("The teacher reads its own tokens: the checks of its distribution are skipped")
    else:
        logits, served_mass, padded = teacher_distribution(
            teacher, live, batches, len(tokenizer), recipe.seed
        )
    findings = [
        vocabulary_check(
            tokenizer,
            student_rows=head_rows(student) or len(tokenizer),
            teacher_rows=None if remote else head_rows(teacher),
            own_tokenizers=own,
            cross_tokenizer=cross,
            kd_term=name,
            vocab_option=None if term is None else term.options.get("vocab_size"),
            padded_mass=padded,
        ),
    ]
    lengths, stop_share = chat_lengths(recipe, tokenizer, stop_ids(tokenizer, student), sample)
    generate, on_policy = getattr(recipe, "generate", None), getattr(recipe, "on_policy", None)
    chat = lengths is not None or generate is not None or on_policy is not None
    findings.append(
        template_check(tokenizer, own, chat=chat, stop_share=stop_share, cross_tokenizer=cross)
    )
    findings.append(truncation_check(lengths, text_spec(recipe).seq_len))
    sparse, k = None, None
    if remote:
        sparse, k = "served teacher", teacher.top_k  # type: ignore[attr-defined]
    elif recipe.cache is not None and recipe.cache.use and not recipe.cache.hidden_states:
        sparse, k = ("top-k cache", recipe.cache.top_k) if recipe.cache.top_k else (None, None)
    findings.append(
        top_k_mass_check(
            logits, temperature=temperature or 1.0, k=k, sparse=sparse, served_mass=served_mass
        )
    )
    if logits is not None:
        findings.append(temperature_check(logits, temperature or 1.0))
    if isinstance(teacher, teachers.EnsembleModel):  # local members, against each other
        names = [m.domain or f"members[{i}]" for i, m in enumerate(recipe.teacher.members)]  # type: ignore[union-attr]
        answers = member_distributions(teacher, batches, len(tokenizer), recipe.seed)
        findings.append(
            member_temperature_check(dict(zip(names, answers, strict=True)), temperature or 1.0)
        )
    samplers = {}
    if generate is not None:
        samplers["generate"] = (generate.temperature, generate.top_p)
    if on_policy is not None:
        samplers["on_policy"] = (on_policy.temperature, on_policy.top_p)
    findings.append(
        sampling_temperature_check(logits, loss_temperature=temperature, samplers=samplers)
    )
    findings.append(teacher_mode_check(live, None if remote else teacher, batches[0]))
    per_epoch = steps_per_epoch(data.student_train, recipe)
    steps = step_budget(recipe, per_epoch)
    make = recipe_objective(recipe, per_epoch, teacher, sparse_teacher=remote)
    log("doctor: one step with gradient accumulation against one batch of the same rows")
    findings.append(
        accumulation_check(
            student,
            live,
            make,
            data.student_train,
            batch_size=recipe.data.batch_size,  # type: ignore[union-attr]
            accum=recipe.train.grad_accum_steps,
        )
    )
    cached_rows = len(data.student_train) + len(data.val)  # type: ignore[arg-type]
    findings.append(
        lm_teacher_cost_check(
            live,
            student,
            batches[0],
            micro_batches=steps * recipe.train.grad_accum_steps,
            cache_batches=math.ceil(cached_rows / recipe.data.batch_size),  # type: ignore[union-attr]
            cache_bytes_per_token=cache_bytes_per_token(recipe, teacher, len(tokenizer)),
            reads_logits=make(student).reads("teacher_logits"),
            cacheable=not cross,
        )
    )
    if on_policy is not None:
        notes.append("On-policy answers are not drawn here: the checks read the offline rows")
    for note in notes:
        log(note)
    return findings, notes
