"""Several teachers behind one interface: averaged, weighted, confidence-weighted or routed.

The members' predictions are combined as probabilities at the distillation temperature T
and handed to the objective as logits whose softmax at T is that mixture:

    p_i = softmax(z_i / T),  p = Σ_i w_i p_i,  z = T · log p

so ``losses.kl(student, z, temperature=T)`` distils from the mixture (Hinton et al. 2015
average an ensemble's soft targets the same way). Combining rules:

- ``mean``: w_i = 1 / K;
- ``weighted``: fixed ``weights`` (normalised to sum to 1);
- ``confidence``: per example, w_i = softmax_i(−H(p_i)), so a teacher that is sure of an
  example (low entropy) counts more there;
- ``route``: each example is answered by one teacher only, the one its batch's ``domain``
  field names (specialised teachers, e.g. one per data subset); only that teacher runs on
  the example.

Members may have different architectures (same number of classes). Tapped features come
back per member as ``"<member>/<path>"``: a term reads ``teacher="vision/layer3"``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from distill.batch import Batch, logits_of
from distill.outputs import TeacherOutput, TopK
from distill.teachers.base import Teacher
from distill.teachers.module import Module

Combine = Literal["mean", "weighted", "confidence", "route"]


def _as_teacher(member: Teacher | nn.Module) -> Teacher:
    return Module(member) if isinstance(member, nn.Module) else member


def mix_logits(logits: Sequence[Tensor], weights: Tensor, temperature: float) -> Tensor:
    """``T · log Σ_i w_i softmax(z_i / T)``; ``weights`` is (K,) or (K, *rows)."""
    log_probs = torch.stack([torch.log_softmax(z.float() / temperature, dim=-1) for z in logits])
    while weights.dim() < log_probs.dim():
        weights = weights.unsqueeze(-1)
    mixed = torch.logsumexp(log_probs + torch.log(weights.clamp_min(1e-30)), dim=0)
    return temperature * mixed


def confidence_weights(logits: Sequence[Tensor], temperature: float) -> Tensor:
    """(K, *rows) weights: softmax over members of the negative entropy of p_i at T."""
    entropies = []
    for z in logits:
        log_p = torch.log_softmax(z.float() / temperature, dim=-1)
        entropies.append(-(log_p.exp() * log_p).sum(-1))
    return torch.softmax(-torch.stack(entropies), dim=0)


class Mixture:
    """How ``members`` teachers answer as one (the module docstring's rules): the one core
    that ``Ensemble`` (teachers) and ``EnsembleModel`` (an ``nn.Module``) share."""

    def __init__(
        self,
        members: int,
        combine: Combine = "mean",
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        if members < 1:
            raise ValueError("an ensemble needs at least one teacher")
        if combine not in ("mean", "weighted", "confidence", "route"):
            raise ValueError(
                f"combine must be mean, weighted, confidence or route, got {combine!r}"
            )
        if (weights is not None) != (combine == "weighted"):
            raise ValueError("give weights exactly when combine='weighted'")
        if weights is not None:
            if len(weights) != members or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(
                    f"weights must be {members} non-negative numbers with a positive sum, "
                    f"got {list(weights)}"
                )
            total = float(sum(weights))
            self.weights = torch.tensor([w / total for w in weights])
        else:
            self.weights = torch.full((members,), 1.0 / members)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.members, self.combine, self.temperature = members, combine, temperature

    def mix(self, logits: Sequence[Tensor]) -> Tensor:
        """The members' logits (one per member, same shape) mixed at the temperature."""
        if self.combine == "confidence":
            weights = confidence_weights(logits, self.temperature)
        else:
            weights = self.weights.to(logits[0].device)
        return mix_logits(logits, weights, self.temperature)

    def route(self, domain: Tensor, size: int, answer: Callable[[int, Tensor], Tensor]) -> Tensor:
        """Each of ``size`` examples answered by member ``domain[n]`` alone:
        ``answer(member, rows)`` gives that member's logits on the examples ``rows``."""
        if domain.numel() and (domain.min() < 0 or domain.max() >= self.members):
            raise ValueError(
                f"domain values must lie in 0..{self.members - 1} (one per member); got "
                f"{sorted(set(domain.tolist()))}"
            )
        result: Tensor | None = None
        for index in range(self.members):
            rows = (domain == index).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            logits = answer(index, rows)
            if result is None:
                result = logits.new_zeros((size, *logits.shape[1:]))
            result[rows] = logits
        assert result is not None, "a batch with no example"
        return result


class Ensemble(Teacher):
    """Teachers ``members`` (a list, or a mapping of names to teachers or modules) that
    answer as one; see the module docstring for ``combine``. ``temperature`` must equal the
    temperature of the KD term that reads the ensemble (the engine checks it)."""

    def __init__(
        self,
        members: Sequence[Teacher | nn.Module] | Mapping[str, Teacher | nn.Module],
        combine: Combine = "mean",
        *,
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        named = members if isinstance(members, Mapping) else dict(enumerate(members))
        self.mixture = Mixture(len(named), combine, weights, temperature)
        self.members = {str(name): _as_teacher(m) for name, m in named.items()}
        self.combine, self.temperature = combine, temperature
        self.weights = self.mixture.weights

    @property
    def fixed_temperature(self) -> float | None:  # type: ignore[override]
        """A mixture of probabilities holds at its temperature only; routed members at
        their own (a top-k cache's), any for models."""
        if self.combine != "route":
            return self.temperature
        fixed = {m.fixed_temperature for m in self.members.values()} - {None}
        return fixed.pop() if len(fixed) == 1 else None

    # -- the Teacher interface -------------------------------------------------------------

    def add_taps(self, paths: Iterable[str]) -> None:
        by_member: dict[str, list[str]] = {}
        for path in paths:
            name, sep, inner = path.partition("/")
            if not sep or name not in self.members:
                raise KeyError(
                    f"ensemble tap {path!r}: write '<member>/<module path>' with a member "
                    f"among {', '.join(self.members)}"
                )
            if self.combine == "route":
                raise ValueError(
                    "a routed ensemble returns no features: each teacher sees a subset"
                )
            by_member.setdefault(name, []).append(inner)
        for name, inner_paths in by_member.items():
            self.members[name].add_taps(inner_paths)

    def to(self, device: torch.device | str) -> Ensemble:
        for member in self.members.values():
            member.to(device)
        return self

    def compile(self, **options: object) -> None:
        for member in self.members.values():
            member.compile(**options)

    def __call__(self, batch: Batch, logits: bool = True) -> TeacherOutput:
        members = list(self.members.values())
        if self.combine == "route":
            domain = batch.meta.get("domain")
            if domain is None:
                raise ValueError(
                    "a routed ensemble needs a 'domain' entry in each batch (a dict batch with "
                    "domain: the index of the teacher of each example)"
                )

            return self._routed(members, batch, domain)
        outputs = {name: member(batch) for name, member in self.members.items()}
        features = {
            f"{name}/{path}": value
            for name, out in outputs.items()
            for path, value in out.features.items()
        }
        member_logits = [out.logits for out in outputs.values()]
        if any(z is None for z in member_logits):
            raise ValueError("every ensemble member must return logits")
        return TeacherOutput(logits=self.mixture.mix(member_logits), features=features)  # type: ignore[arg-type]

    def _routed(self, members: list[Teacher], batch: Batch, domain: Tensor) -> TeacherOutput:
        """Each example answered by its own member alone: logits, or a top-k (a cached or
        served member), assembled row by row; each member runs once, on its rows."""
        answers: dict[int, TeacherOutput] = {}

        def field(read: Callable[[TeacherOutput], Tensor]) -> Tensor:
            def answer(index: int, rows: Tensor) -> Tensor:
                if index not in answers:
                    answers[index] = alike(answers, members[index](batch.select(rows)))
                return read(answers[index])

            return self.mixture.route(domain, batch.size(), answer)

        first = field(lambda out: out.logits if out.topk is None else out.topk.ids)  # type: ignore[arg-type,return-value]
        top = next(iter(answers.values())).topk
        if top is None:
            return TeacherOutput(first)
        topk = TopK(
            ids=first,
            logprobs=field(lambda out: out.topk.logprobs),  # type: ignore[union-attr]
            tail=field(lambda out: out.topk.tail),  # type: ignore[union-attr]
            temperature=top.temperature,
        )
        return TeacherOutput(logits=None, topk=topk)


def alike(earlier: dict[int, TeacherOutput], out: TeacherOutput) -> TeacherOutput:
    """``out``, refused unless it answers as the routed members before it did: all logits,
    or all a top-k at one temperature."""
    if earlier:
        first = next(iter(earlier.values())).topk
        kinds = [top if top is None else (top.temperature, top.ids.shape[-1])
                 for top in (first, out.topk)]  # fmt: skip
        if kinds[0] != kinds[1]:
            raise ValueError(
                "the members of a routed ensemble must answer alike: all logits, or all the "
                f"same top-k at one temperature (got {' and '.join(map(_kind, kinds))})"
            )
    return out


def _kind(top: tuple[float, int] | None) -> str:
    return "logits" if top is None else f"a top-{top[1]} at temperature {top[0]:g}"


class EnsembleModel(nn.Module):
    """Members combined into one ``nn.Module`` whose logits are the mixture
    ``T · log Σ_i w_i softmax(z_i / T)`` (``mean``, ``weighted`` or ``confidence``), or, with
    ``route``, member ``domain[n]``'s logits for example ``n`` (``forward(x, domain=...)``;
    ``Batch.run`` passes a batch's domains). Usable wherever a single teacher model is, e.g.
    ``teachers.Module(EnsembleModel(...))`` in a recipe run, which then also measures the
    ensemble's size and latency."""

    def __init__(
        self,
        members: Sequence[nn.Module],
        combine: Combine = "mean",
        weights: Sequence[float] | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.mixture = Mixture(len(members), combine, weights, temperature)
        self.combine, self.temperature = combine, temperature
        self.register_buffer("weights", self.mixture.weights, persistent=False)

    def forward(self, *args, domain: Tensor | None = None, **kwargs) -> Tensor:
        if self.combine == "route":
            if domain is None:
                raise ValueError(
                    "a routed ensemble needs domain=: the index of each example's domain (its "
                    "teacher); recipe data gets it from data.domains"
                )
            batch = Batch(args=args, kwargs=kwargs)

            def answer(index: int, rows: Tensor) -> Tensor:
                return logits_of(batch.select(rows).run(self.members[index]))

            return self.mixture.route(domain, batch.size(), answer)
        return self.mixture.mix([logits_of(m(*args, **kwargs)) for m in self.members])
