"""Why pruning the residual (embedding) width hurts before distillation: criteria compared on the
digits testbed's trained teacher, with and without a LayerNorm refit.

    python benchmarks/embedding_probe.py [--ratios 0.5 0.77] [--json probe.json]

Embedding-only pruning, uniform, calibrated on 64 training images (5 subsets for disturbed Taylor,
5 seeds for random). Criteria: disturbed Taylor, magnitude, random, the residual stream's activations (keeping the largest, or the smallest),
and an oracle-like single-channel ablation (the output MSE when one channel is zeroed at the patch
embedding, i.e. everywhere). "refit": after pruning, each LayerNorm's weight and bias are refitted per
kept channel, in forward order, by least squares so that its output matches the teacher's (the
candidate the quality issue proposed). Not adopted in the engine: see docs/quality.md.
"""

from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

from _report import emit

import vitslim
from vitslim.testbed import get_testbed


def _ln_io(model, x, names):
    out = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: out.__setitem__(n, (a[0], o)))
             for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return out


def refit_norms(student, teacher, keep, x):
    """Least-squares LayerNorm weight/bias per kept channel, in forward order."""
    names = [n for n, m in student.named_modules() if isinstance(m, nn.LayerNorm)]
    target = _ln_io(teacher, x, names)
    for n in names:
        ln = student.get_submodule(n)
        inp, _ = _ln_io(student, x, [n])[n]
        z = nn.functional.layer_norm(inp, inp.shape[-1:], eps=ln.eps).reshape(-1, inp.shape[-1])
        y = target[n][1][..., keep].reshape(-1, len(keep))
        zm, ym = z.mean(0), y.mean(0)
        g = ((z - zm) * (y - ym)).mean(0) / ((z - zm) ** 2).mean(0).clamp_min(1e-8)
        with torch.no_grad():
            ln.weight.copy_(g)
            ln.bias.copy_(ym - g * zm)
    return student


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", nargs="+", type=float, default=[0.5, 0.77])
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    tb = get_testbed("digits-vit")
    teacher = tb.teacher()
    x = tb.subset(64, seed=0)
    calib = list(x.split(8))
    residual = {}
    hooks = [teacher.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: residual.__setitem__(n, a[0]))
             for n, m in teacher.named_modules() if isinstance(m, nn.LayerNorm)]
    with torch.no_grad():
        reference = teacher(x)
    for h in hooks:
        h.remove()
    energy = sum(v.pow(2).mean(tuple(range(v.dim() - 1))) for v in residual.values()).double()

    def ablation(group, ctx):
        scores = []
        for c in range(group.size):
            h = teacher.patch_embed.register_forward_hook(lambda m, a, o, c=c: o.index_fill(-1, torch.tensor([c]), 0.0))
            with torch.no_grad():
                scores.append(nn.functional.mse_loss(teacher(x), reference).item())
            h.remove()
        return torch.tensor(scores, dtype=torch.float64)

    criteria = {"disturbed_taylor (5 calibration subsets)": ["disturbed_taylor"] * 5, "magnitude": ["magnitude"],
                "random (5 seeds)": ["random"] * 5, "activations, keep largest": [lambda g, c: energy],
                "activations, keep smallest": [lambda g, c: -energy], "single-channel ablation": [ablation]}
    rows = []
    for ratio in args.ratios:
        for label, crits in criteria.items():
            plain, refit = [], []
            for seed, crit in enumerate(crits):
                data = calib if seed == 0 else list(tb.subset(64, seed=seed).split(8))
                kw = dict(part="embedding", importance=crit, ranking="uniform", data=data, seed=seed)
                keep = vitslim.plan(teacher, ratio, **kw).keep["embedding"]
                student = vitslim.prune(teacher, ratio, **kw)
                plain.append(tb.score(student)["accuracy"])
                refit.append(tb.score(refit_norms(copy.deepcopy(student), teacher, keep, x))["accuracy"])
            rows.append({"ratio": ratio, "criterion": label, "accuracy": sum(plain) / len(plain),
                         "range": [min(plain), max(plain)], "accuracy_refit": sum(refit) / len(refit)})
            print(f"{ratio} {label}: {rows[-1]['accuracy']:.1f} ({min(plain):.1f}-{max(plain):.1f}) -> refit "
                  f"{rows[-1]['accuracy_refit']:.1f}", flush=True)
    emit({"teacher_accuracy": tb.score(teacher)["accuracy"], "rows": rows}, args.json_out)


if __name__ == "__main__":
    main()
