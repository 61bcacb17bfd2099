"""Short timm names: ``vit_base`` -> ``vit_base_patch16_224``, ``dinov2_small`` -> ``vit_small_patch14_dinov2``.

A user types the family and size; timm registers one architecture per patch size, resolution and
recipe. The canonical one is the plain ``<name>_patch<P>_224`` (patch 16 where there is one) among those
timm has pretrained weights for; ``<recipe>_<size>`` (``dinov2_base``, ``clip_large``, ``siglip_base``)
picks the ViT trained by that recipe, and a name timm spells with a ``vit_`` prefix gets it
(``pe_core_base`` -> ``vit_pe_core_base_patch16_224``). Anything else is refused with the closest registered names.
"""

from __future__ import annotations

import difflib
import functools
import re

from vitslim.errors import UsageError

RECIPES = ("dinov2", "dinov3", "clip", "siglip", "mae", "dino")  # words timm puts after the patch size


@functools.lru_cache(maxsize=1)
def _pretrained() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models(pretrained=True))  # architecture names with weights


@functools.lru_cache(maxsize=1)
def _known_names() -> tuple[str, ...]:
    """Registered names and the short names they give (``vit_base`` from ``vit_base_patch16_224``)."""
    import timm

    models = timm.list_models()
    shorts = {m.group(1) for name in models if (m := re.fullmatch(r"(.+)_patch\d+_224", name))}
    return tuple(sorted(set(models) | shorts))


def _pick(candidates: list[str], prefer: str) -> str | None:
    """The candidate with pretrained weights, matching ``prefer`` best, then the shortest name."""
    if not candidates:
        return None
    pretrained = _pretrained()
    with_weights = [c for c in candidates if c in pretrained] or candidates
    return sorted(with_weights, key=lambda c: (prefer not in c, len(c), c))[0]


def resolve(arch: str) -> str:
    """The registered timm architecture ``arch`` means; a :class:`UsageError` naming the closest ones
    if there is none."""
    import timm

    if timm.is_model(arch):
        return arch
    word, _, size = arch.partition("_")
    chosen = None
    if word in RECIPES and size:
        chosen = _pick([m for m in timm.list_models(f"vit_{size}_*") if f"_{word}" in m], "patch16")
    if chosen is None:
        plain = [m for m in timm.list_models(f"{arch}_*") if re.fullmatch(rf"{re.escape(arch)}_patch\d+_224", m)]
        chosen = _pick(plain, "patch16")
    if chosen is None:  # a name timm spells with a vit_ prefix: pe_core_base -> vit_pe_core_base_patch16_224
        chosen = _pick([m for m in timm.list_models(f"vit_{arch}_*")
                        if re.fullmatch(rf"vit_{re.escape(arch)}_patch\d+_\d+", m)], "patch16")
    if chosen is None:
        close = difflib.get_close_matches(arch, _known_names(), n=4, cutoff=0.5)
        hint = f": closest are {', '.join(close)}" if close else " (list them with `timm.list_models('vit_*')`)"
        raise UsageError(f"unknown timm model '{arch}'{hint}")
    return chosen
