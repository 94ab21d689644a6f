"""The members of a mixture or routed teacher checked against each other: one KD
temperature teaches from all of them, so a member much sharper than the others gives
nearly the labels on its rows while the others give soft targets."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from distill.doctor.checks import Finding, soft_target_stats, temperature_check

SPREAD = 3.0  # off-top shares further apart than this factor: a warning


def member_temperature_check(
    member_logits: Mapping[str, Tensor],
    temperature: float,
    band: tuple[float, float] = (0.05, 0.8),
) -> Finding:
    """Each member's soft targets at the one KD ``temperature``, on the positions it
    answers (its own rows when routed): the off-top share, (1 − max p) / (1 − 1/C), as in
    ``temperature_check``. A ``problem`` when a member's share is below ``band[0]`` (its
    targets are the labels again); a ``warning`` when the members' shares lie more than
    ``SPREAD``-fold apart (one temperature suits them unequally); otherwise ``ok``."""
    shares = {
        name: soft_target_stats(logits, temperature)[1]
        for name, logits in member_logits.items()
        if logits.numel()
    }
    best = {
        name: temperature_check(member_logits[name], temperature, band=band).measurements[
            "recommended"
        ]
        for name in shares
    }  # each member's lowest temperature whose share is in the band
    measurements = {"temperature": temperature, "off_top_share": shares, "recommended": best}
    each = ", ".join(f"{name} {t:g}" for name, t in best.items())
    described = ", ".join(f"{name} {100 * share:.1f}%" for name, share in shares.items())
    summary = (
        f"at T = {temperature:g} the members' soft targets hold {described} of the off-top mass"
    )
    if not shares:
        return Finding("members", "ok", "no member answered a sampled row", "", measurements)
    sharp = [name for name, share in shares.items() if share < band[0]]
    if sharp:
        return Finding(
            "members",
            "problem",
            f"{summary}: {', '.join(sharp)} teach nearly the labels",
            f"raise the KD temperature (each member's best: {each}), or soften the sharp "
            "member (fewer fine-tuning steps, label smoothing)",
            measurements,
        )
    low, high = min(shares.values()), max(shares.values())
    if high > SPREAD * low:
        return Finding(
            "members",
            "warning",
            f"{summary}: one temperature suits them unequally ({high / low:.1f}-fold apart)",
            "check the sharpest member is not overconfident; a temperature between their "
            f"best ones ({each}) teaches both",
            measurements,
        )
    return Finding("members", "ok", summary, "keep the temperature", measurements)
