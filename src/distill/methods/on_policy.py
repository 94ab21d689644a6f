"""On-policy distillation (GKD): the student writes the answers, the teacher grades them.

Generalized knowledge distillation (Agarwal et al., "On-Policy Distillation of Language
Models: Learning from Self-Generated Mistakes", ICLR 2024) trains on a mixture of two
sources of output sequences for the same prompts x: the fixed dataset's answers y, and,
with probability λ (``lam``), the student's own samples y ~ p_S(· | x). On either, the
objective is a divergence D between the teacher's and the student's next-token
distributions, summed token by token along the sequence,

    L(θ) = E_x [ (1 - λ) E_{y ~ data} + λ E_{y ~ p_S(·|x)} ] Σ_n D(p_T(·|y<n, x) ‖ p_S(·|y<n, x)),

with D the forward KL (Hinton), the reverse KL (mode seeking, as MiniLLM) or the
generalized Jensen-Shannon divergence JSD(β) of the paper; no gradient flows through the
sampling itself. λ = 0 is ordinary (off-policy, supervised) KD on the dataset's answers;
λ = 1 is fully on-policy, which removes the train/inference mismatch of a student that
never sees its own mistakes during training.

Here the mixture is a batch transform, ``Distiller(..., batch_transform=OnPolicy(...))``:
on a micro-batch drawn on-policy, every chat row (the ``ChatExamples`` convention) keeps
its prompt and gets the student's sampled answer in place of the dataset's, labelled as
the next tokens; whatever token-level term the objective has (``token_kd_term`` with
``divergence="kl" | "reverse_kl" | "jsd"``, ``losses.kl`` on full logits, …) then computes
the divergence on the student's samples, where the teacher says what it would have written
instead. The teacher, the losses and the engine are unchanged.

Determinism: whether a micro-batch goes on-policy is a pure function of
(``seed``, ``step``, micro-batch index within the step): the index counts the calls made
with the same ``step`` (the engine calls the transform once per micro-batch, in order,
then moves to the next step), so the micro-batches of one accumulation window get
independent draws, a resumed run makes the same choices, and every process of a
multi-process run makes the same choice for the same micro-batch (they generate together).
The student's sampling runs under a forked torch RNG seeded by (seed, step, micro-batch,
process rank): the samples are reproducible too, and the caller's RNG stream (dropout,
data order) is the same whatever λ is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from distill.batch import Batch
from distill.outputs import IGNORE_INDEX

_MASK64 = (1 << 64) - 1


class OnPolicy:
    """With probability ``lam`` per training micro-batch, the student answers the prompts.

    Args:
        student: the model being trained (a Hugging Face causal LM, or a wrapper around one
            with ``.module``, as DDP): it must have ``generate``.
        lam: λ, the probability that a micro-batch is answered by the student (0: plain
            off-policy KD, the batch passes through untouched; 1: always on-policy).
        max_new_tokens: the longest answer sampled; an answer is also cut where the row's
            length (the batch's T) ends.
        temperature: the student's sampling temperature; 0 samples greedily.
        top_p: nucleus sampling (1: the whole distribution). No top-k, repetition penalty
            or other shaping from the model's generation config is applied: samples come
            from the student's own distribution (at ``temperature``, within ``top_p``).
        pad_token_id: the token written after an answer's end.
        eos_token_id: the end token (or several); the student's ``generation_config`` end
            tokens are added (a chat model lists its end-of-turn token there). An answer
            stops at the first of them, which is labelled; what follows is padding. With
            none at all, answers run to ``max_new_tokens``.
        seed: with the step, decides which micro-batches go on-policy and seeds sampling.

    Attributes:
        last_on_policy: whether the last call replaced the answers.
        generated_batches: micro-batches rewritten so far.
        generated_tokens: student-written tokens kept in those batches (labelled positions).

    A rewritten batch keeps ``input_ids``'s shape (B, T): row i is its prompt
    ``input_ids[i, : j0 + 1]`` (j0: the first labelled position), the student's answer,
    then ``pad_token_id``; ``attention_mask`` is 1 on prompt and answer; ``labels[j]`` is
    the token at j + 1 on the answer and -100 on the prompt and padding (an answer longer
    than the row keeps its token at T as the last label, as ``ChatExamples`` does); ``mask``
    is ``labels != -100``. Rows with no labelled position are kept as they are. Metadata
    (``example_id``, ``domain``) is kept; keyword arguments aligned with the positions
    (shape (B, T), e.g. ``position_ids``) are dropped, other ones kept.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        lam: float = 0.5,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        pad_token_id: int,
        eos_token_id: int | Sequence[int] | None = None,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"on_policy.lam must be in [0, 1], got {lam}")
        if int(max_new_tokens) != max_new_tokens or max_new_tokens < 1:
            raise ValueError(
                f"on_policy.max_new_tokens must be an integer >= 1, got {max_new_tokens}"
            )
        if not temperature >= 0:
            raise ValueError(f"on_policy.temperature must be >= 0 (0: greedy), got {temperature}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"on_policy.top_p must be in (0, 1], got {top_p}")
        if pad_token_id is None or int(pad_token_id) < 0:
            raise ValueError(
                f"on_policy.pad_token_id must be a token id >= 0, got {pad_token_id}; pass "
                "tokenizer.pad_token_id (or tokenizer.eos_token_id if it has no pad token)"
            )
        ends = [] if eos_token_id is None else _ids(eos_token_id)
        if any(e < 0 for e in ends):
            raise ValueError(f"on_policy.eos_token_id must be token ids >= 0, got {eos_token_id}")
        _generating_model(student)  # fails now, not at the first on-policy step
        self.student = student
        self.lam = float(lam)
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.pad_token_id = int(pad_token_id)
        self.eos_token_id = eos_token_id
        self.seed = int(seed)
        self.last_on_policy = False
        self.generated_batches = 0
        self.generated_tokens = 0
        self._step: int | None = None
        self._micro = 0

    def __repr__(self) -> str:
        return (
            f"OnPolicy(lam={self.lam}, max_new_tokens={self.max_new_tokens}, "
            f"temperature={self.temperature}, top_p={self.top_p}, seed={self.seed})"
        )

    # -- the mixture ---------------------------------------------------------------------

    def _draw(self, step: int) -> bool:
        """Whether this call of ``step`` goes on-policy: uniform(seed, step, micro) < λ."""
        self._micro = self._micro + 1 if step == self._step else 0
        self._step = step
        return _uniform(self.seed, step, self._micro) < self.lam

    def __call__(self, batch: Batch, step: int) -> Batch:
        """``batch`` itself (probability 1 - λ), or its prompts answered by the student."""
        self.last_on_policy = False
        if not self._draw(step):
            return batch
        return self.rewrite(batch)

    # -- the student's answers -----------------------------------------------------------------

    @torch.no_grad()
    def rewrite(self, batch: Batch) -> Batch:
        """The same prompts, answered by the student, in the row convention (see the class)."""
        ids, labels = batch.kwargs.get("input_ids"), batch.labels
        if ids is None or labels is None or batch.args:
            raise ValueError(
                "on-policy distillation rewrites chat rows: a dict batch with 'input_ids' and "
                "'labels' (-100 on the prompt), as distill.data.text.ChatExamples yields"
            )
        if ids.dim() != 2 or labels.shape != ids.shape:
            raise ValueError(
                f"on-policy rows need input_ids and labels of one shape (B, T); got "
                f"{tuple(ids.shape)} and {tuple(labels.shape)}"
            )
        n_rows, length = ids.shape
        device, pad = ids.device, self.pad_token_id
        labelled = labels != IGNORE_INDEX
        rows = labelled.any(1).nonzero().squeeze(1)
        if rows.numel() == 0:
            return batch  # no answer to replace: nothing generated
        # the prompt of a row ends at its first labelled position j0 (it predicts the answer)
        prompt_len = labelled[rows].int().argmax(1) + 1
        answers = self._generate(_left_padded(ids[rows], prompt_len, pad), length)
        ends = self._end_tokens()
        if ends:
            is_end = torch.isin(answers, torch.tensor(ends, device=device))
            first = is_end.int().argmax(1)
            answer_len = torch.where(is_end.any(1), first + 1, answers.shape[1])
        else:
            answer_len = torch.full_like(prompt_len, answers.shape[1])
        # each row as T + 1 tokens: prompt, answer up to its end token, padding
        k = torch.arange(length + 1, device=device)[None, :]
        start = prompt_len[:, None]
        in_prompt = k < start
        in_answer = ~in_prompt & (k < start + answer_len[:, None])
        at = (k - start).clamp(0, answers.shape[1] - 1)
        tokens = torch.where(in_answer, answers.gather(1, at), pad)
        source = torch.cat([ids[rows], ids.new_full((rows.numel(), 1), pad)], 1)
        tokens = torch.where(in_prompt, source, tokens)
        row_labels = torch.where(in_answer[:, 1:], tokens[:, 1:], IGNORE_INDEX)

        new_ids = ids.clone()
        new_ids[rows] = tokens[:, :length].to(ids.dtype)
        attention = batch.kwargs.get("attention_mask")
        if attention is None or attention.shape != ids.shape:
            attention = torch.ones_like(ids)
        new_attention = attention.clone()
        new_attention[rows] = (in_prompt | in_answer)[:, :length].to(attention.dtype)
        new_labels = labels.clone()
        new_labels[rows] = row_labels.to(labels.dtype)
        new_mask = new_labels != IGNORE_INDEX
        if batch.mask is not None and batch.mask.shape == ids.shape:
            kept = torch.ones(n_rows, dtype=torch.bool, device=device)
            kept[rows] = False
            new_mask[kept] = batch.mask[kept].bool()  # rows without an answer, as they were

        kwargs = {
            name: value
            for name, value in batch.kwargs.items()
            if not (isinstance(value, Tensor) and tuple(value.shape[:2]) == (n_rows, length))
        }
        kwargs.update(input_ids=new_ids, attention_mask=new_attention)
        self.last_on_policy = True
        self.generated_batches += 1
        self.generated_tokens += int((row_labels != IGNORE_INDEX).sum())
        return Batch(args=(), kwargs=kwargs, labels=new_labels, mask=new_mask, meta=batch.meta)

    def _end_tokens(self) -> list[int]:
        ends = [] if self.eos_token_id is None else _ids(self.eos_token_id)
        config = getattr(_generating_model(self.student), "generation_config", None)
        model_ends = getattr(config, "eos_token_id", None)
        for token in [] if model_ends is None else _ids(model_ends):
            if token not in ends:
                ends.append(token)
        return ends

    def _generate(self, prompts: tuple[Tensor, Tensor], length: int) -> Tensor:
        """The student's new tokens (R, G) after the left-padded ``prompts``, in eval mode,
        under a forked RNG seeded by (seed, step, micro-batch, rank)."""
        input_ids, attention_mask = prompts
        prompt_lengths = attention_mask.sum(1)
        # no row has room for more than T + 1 - (its prompt) tokens
        budget = min(self.max_new_tokens, length + 1 - int(prompt_lengths.min()))
        model = _generating_model(self.student)
        ends = self._end_tokens()
        if self.temperature > 0:  # the student's own distribution: no top-k, no penalties
            shaping: dict[str, Any] = {
                "do_sample": True,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": 0,
            }
        else:
            shaping = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        options = {
            **shaping,
            "min_p": None,
            "typical_p": 1.0,
            "repetition_penalty": 1.0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "max_new_tokens": budget,
            "min_new_tokens": None,
            "pad_token_id": self.pad_token_id,
        }
        if ends:
            options["eos_token_id"] = ends
        modes = [(module, module.training) for module in self.student.modules()]
        micro = self._micro if self._step is not None else 0
        seed = _mix(self.seed, -1 if self._step is None else self._step, micro, 1, _rank()) >> 1
        try:
            model.eval()
            with _seeded_rng(input_ids.device, seed):
                output = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask, **options
                )
        finally:
            for module, training in modes:
                module.training = training
        sequences = getattr(output, "sequences", output)
        answers = sequences[:, input_ids.shape[1] :]
        if answers.shape[1] == 0:
            raise RuntimeError(
                f"{type(model).__name__}.generate returned no new token (max_new_tokens="
                f"{budget}); on-policy distillation needs the student's answers"
            )
        return answers


def _ids(value: int | Sequence[int]) -> list[int]:
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _generating_model(model: nn.Module) -> nn.Module:
    """``model``, or the model it wraps (DDP's ``.module``, ``torch.compile``'s
    ``._orig_mod``), whichever has ``generate``."""
    current: Any = model
    while not callable(getattr(current, "generate", None)):
        inner = getattr(current, "module", None) or getattr(current, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(
                f"on-policy distillation samples answers with the student's .generate; "
                f"{type(model).__name__} has none (use a Hugging Face causal LM, e.g. "
                "transformers.AutoModelForCausalLM)"
            )
        current = inner
    return current


def _left_padded(ids: Tensor, lengths: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """The first ``lengths[i]`` tokens of each row, right-aligned: (input_ids, attention_mask)."""
    width = int(lengths.max())
    column = torch.arange(width, device=ids.device)[None, :]
    source = column - (width - lengths)[:, None]
    real = source >= 0
    prompts = torch.where(real, ids.gather(1, source.clamp(min=0)), pad)
    return prompts, real.long()


def _mix(*values: int) -> int:
    """A 64-bit hash of integers (SplitMix64 steps): the same on every platform and run."""
    state = 0
    for value in values:
        state = (state ^ (value & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state


def _uniform(*values: int) -> float:
    """A number in [0, 1) determined by ``values``."""
    return (_mix(*values, 0) >> 11) / float(1 << 53)


def _rank() -> int:
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_rank()
    return 0


@contextlib.contextmanager
def _seeded_rng(device: torch.device, seed: int) -> Iterator[None]:
    """The CPU RNG and ``device``'s (CUDA) RNG seeded by ``seed``, restored afterwards."""
    cuda = device.type == "cuda"
    index = (
        (device.index if device.index is not None else torch.cuda.current_device())
        if cuda
        else None
    )
    with torch.random.fork_rng(devices=[index] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
