"""Which timm Vision Transformers vitslim supports: every architecture registered in timm's plain-ViT
modules, built on the meta device (no weights, no arithmetic) at its own size and config, put through
the timm family's check, then pruned at 0.5 (both parts, random scores, head dims and whole heads: the
dependency graph must agree with the family's description) and run forward on a meta input. Only a
model that gets through all of it counts as supported.

    python benchmarks/timm_coverage.py [--json coverage.json]

Prints the count per module and the one-line reason of each refusal, grouped; the JSON lists every
architecture with its verdict.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import warnings

import torch

from _report import emit

MODULES = ("vision_transformer", "deit", "eva", "beit", "vision_transformer_relpos", "vision_transformer_sam",
           "vision_transformer_hybrid", "naflexvit")


def verdict(arch: str) -> str | None:
    """None if vitslim supports ``arch``, else the reason it is refused (one line)."""
    import timm

    import vitslim
    from vitslim.errors import VitslimError
    from vitslim_timm.family import TimmFamily

    family = TimmFamily()
    try:
        with warnings.catch_warnings(), torch.device("meta"):
            warnings.simplefilter("ignore")
            model = timm.create_model(arch, pretrained=False)
        family._check(model, arch)
        for attention in ("head_dim", "heads"):
            pruned = vitslim.prune(model, 0.5, part="both", importance="random", attention=attention)
            with torch.no_grad():
                pruned(torch.empty(1, *family.input_shape(model), device="meta"))
    except VitslimError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a build failure on the meta device is a verdict too
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return None


def reason_kind(reason: str) -> str:
    """The reason without the architecture and block numbers, for grouping."""
    return re.sub(r"timm:\S+ ", "", re.sub(r"block \d+", "block N", reason))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    import timm

    rows = []
    for module in MODULES:
        for arch in timm.list_models(module=module):
            rows.append({"module": module, "arch": arch, "refused": verdict(arch)})
            print(f"{module} {arch}: {rows[-1]['refused'] or 'supported'}", file=sys.stderr, flush=True)
    per_module = {m: {"supported": sum(1 for r in rows if r["module"] == m and not r["refused"]),
                      "total": sum(1 for r in rows if r["module"] == m)} for m in MODULES}
    reasons = collections.Counter(reason_kind(r["refused"]) for r in rows if r["refused"])
    supported = sum(1 for r in rows if not r["refused"])
    emit({"timm": timm.__version__, "supported": supported, "total": len(rows), "per_module": per_module,
          "refusals": dict(reasons.most_common()), "models": rows}, args.json_out)


if __name__ == "__main__":
    main()
