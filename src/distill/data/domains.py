"""Domains: a coarse field known for every example, labelled or not, that says which
specialised teacher answers it (a routed ensemble).

A recipe names domains as groups of classes, e.g. a shop's departments over Fashion-MNIST:

    domains: {clothing: [0, 1, 2, 3, 4, 6], shoes_and_bags: [5, 7, 8, 9]}

Every example then carries its domain's index as metadata (``(inputs, label,
{"domain": d})``), also in the transfer set whose fine labels are hidden: the department
of an item is known even when its class is not. The student never reads it; teachers
trained on one domain each (``teacher.members[*].domain``) and routed by it do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset, Subset


def class_to_domain(domains: Mapping[str, Sequence[int]], num_classes: int) -> list[int]:
    """For each class, the index (in ``domains`` order) of the domain that holds it; every
    class must be in exactly one domain."""
    owner: dict[int, str] = {}
    for name, classes in domains.items():
        for c in classes:
            if not 0 <= c < num_classes:
                raise ValueError(
                    f"data.domains.{name}: class {c} is not among the {num_classes} classes "
                    f"0..{num_classes - 1}"
                )
            if c in owner:
                raise ValueError(
                    f"data.domains: class {c} is in both {owner[c]} and {name}; put each class "
                    "in one domain"
                )
            owner[c] = name
    missing = sorted(set(range(num_classes)) - set(owner))
    if missing:
        raise ValueError(f"data.domains: classes {missing} are in no domain; every class needs one")
    names = list(domains)
    return [names.index(owner[c]) for c in range(num_classes)]


class WithDomain(Dataset):
    """``(inputs, label)`` examples as ``(inputs, label, {"domain": d})``, where ``d`` is
    ``domain_of_class[label]``: the domain follows the example through later splits, also
    where the label is hidden."""

    def __init__(self, dataset: Dataset, domain_of_class: Sequence[int]) -> None:
        self.dataset, self.domain_of_class = dataset, list(domain_of_class)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int, dict[str, int]]:
        x, y = self.dataset[index]
        return x, y, {"domain": self.domain_of_class[int(y)]}


def domain_subset(dataset: Dataset, domain: int) -> Subset:
    """The examples of ``dataset`` (items with a metadata dict) in domain ``domain``."""
    keep = [i for i in range(len(dataset)) if dataset[i][2]["domain"] == domain]  # type: ignore[arg-type]
    return Subset(dataset, keep)
