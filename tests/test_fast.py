"""The fast inference path computes what the plain model computes (fp32, within 1e-5)."""

import copy
import os

import pytest
import torch

import vitslim

from .conftest import encode, resize_batch


@pytest.mark.parametrize("which,size", [("tiny_sam", 128), ("tiny_timm", 64)])
@pytest.mark.parametrize("prune", [None, "head_dim", "heads"])
def test_fast_path_is_exact(which, size, prune, request, photos):
    model = request.getfixturevalue(which)
    if prune:
        model = vitslim.prune(model, 0.4, part="both", importance="random", attention=prune, seed=1)
    x = resize_batch(photos, size)
    plain = encode(model, x)
    fast_model = vitslim.optimize(copy.deepcopy(model))
    if which == "tiny_sam":
        from vitslim_sam.fast import FusedAttention

        kinds = {type(b.attn) for b in fast_model.image_encoder.blocks}
        assert kinds == {FusedAttention}  # windowed and global blocks both switched
    fast = encode(fast_model, x)
    assert (fast - plain).abs().max().item() <= 1e-5
    assert fast_model.state_dict().keys() == model.state_dict().keys()


# torch's inductor cannot compile flex_attention's CPU kernel when ATEN_CPU_CAPABILITY=default (its generated
# C++ uses vector helpers that build lacks: "'transpose_block' is not a member of 'at::vec'", torch 2.14.1)
no_vector_isa = torch.backends.cpu.get_cpu_capability() == "DEFAULT"
FLEX = pytest.param("flex", marks=pytest.mark.skipif(no_vector_isa, reason="inductor's CPU flex kernel needs a vector ISA"))


@pytest.mark.parametrize("kernel", ["sdpa", "chunked", FLEX])
def test_each_sam_kernel_is_exact(kernel, tiny_sam, photos, monkeypatch):
    """Per-block widths (global ranking), pruned head dims (below 16: ``flex`` pads them), windowed
    blocks (16 tokens) and global blocks (64 tokens); ``chunked`` is forced into blocks of 16 queries."""
    from vitslim_sam import fast

    monkeypatch.setattr(fast, "MASK_BLOCK_BYTES", 1)
    calls = []  # (kernel, queries) of each attention call; "masked" for chunked's inner SDPA calls

    def counted(name, attend):
        def wrapper(q, *rest):
            calls.append((name, q.shape[2]))
            return attend(q, *rest)
        return wrapper

    monkeypatch.setattr(fast, "ATTEND", {name: counted(name, f) for name, f in fast.ATTEND.items()})
    monkeypatch.setattr(fast, "attend_masked", counted("masked", fast.attend_masked))
    model = vitslim.prune(tiny_sam, 0.5, part="both", importance="magnitude", ranking="global")
    assert min(w["head_dim"] for w in vitslim.describe(model).widths()["blocks"]) < fast.FLEX_MIN_HEAD_DIM
    x = resize_batch(photos[:2], 128)
    plain = encode(model, x)
    fast_out = encode(vitslim.optimize(copy.deepcopy(model), kernel=kernel), x)
    assert (fast_out - plain).abs().max().item() <= 1e-5
    kernel_calls = [c for c in calls if c[0] != "masked"]
    assert sorted(kernel_calls) == [(kernel, 16)] * 2 + [(kernel, 64)] * 2
    masked = [n for name, n in calls if name == "masked"]
    if kernel == "chunked":  # 2 windowed blocks whole, 2 global blocks in 4 query blocks each
        assert masked == [16] * 10


def test_rel_pos_table_matches_sam():
    from segment_anything.modeling.image_encoder import get_rel_pos
    from vitslim_sam.fast import rel_pos_table

    for size, length in [(14, 27), (64, 127), (8, 31)]:  # the last one is interpolated
        table = torch.randn(length, 6)
        assert torch.equal(rel_pos_table(size, table), get_rel_pos(size, size, table))


@pytest.mark.parametrize("kernel", ["sdpa", "chunked"])
def test_fused_kernels_give_the_same_gradients(kernel, tiny_sam, photos, monkeypatch):
    """Distillation trains through the fused attention: parameter gradients must match the plain ones."""
    from vitslim_sam import fast

    monkeypatch.setattr(fast, "TRAINING_BLOCK_BYTES", 1)
    model = vitslim.prune(tiny_sam, 0.5, part="both", importance="magnitude", ranking="global")
    fused = vitslim.optimize(copy.deepcopy(model), kernel=kernel)
    x = resize_batch(photos[:2], 128)
    grads = []
    for m in (model, fused):
        m.image_encoder(x).square().mean().backward()
        grads.append({n: p.grad for n, p in m.image_encoder.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=1e-4, atol=1e-6), name


def test_chunked_kernel_splits_queries(monkeypatch):
    from vitslim_sam import fast

    monkeypatch.setattr(fast, "MASK_BLOCK_BYTES", 1)
    q, k, v = (torch.randn(1, 2, 64, 8) for _ in range(3))
    bh, bw = torch.randn(1, 2, 64, 8), torch.randn(1, 2, 64, 8)
    blocks = []
    real = fast.attend_masked
    monkeypatch.setattr(fast, "attend_masked", lambda q, *a: blocks.append(q.shape[2]) or real(q, *a))
    out = fast.attend_chunked(q, k, v, bh, bw, 0.3)
    assert blocks == [16, 16, 16, 16]
    assert torch.allclose(out, real(q, k, v, bh, bw, 0.3), atol=1e-6)


def test_chunked_kernel_under_autograd_splits_queries_and_matches(monkeypatch):
    from vitslim_sam import fast

    monkeypatch.setattr(fast, "TRAINING_BLOCK_BYTES", 1)
    torch.manual_seed(0)
    inputs = [torch.randn(1, 2, 64, 8, requires_grad=True) for _ in range(5)]
    blocks = []
    baddbmm = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda m, a, b: blocks.append(a.shape[1]) or baddbmm(m, a, b))
    out = fast.attend_chunked(*inputs, 0.3)
    assert blocks == [16, 16, 16, 16]
    grads = torch.autograd.grad(out.square().sum(), inputs)
    monkeypatch.undo()
    expected = fast.attend_masked(*inputs, 0.3)
    assert torch.allclose(out, expected, atol=1e-6)
    for g, e in zip(grads, torch.autograd.grad(expected.square().sum(), inputs)):
        assert torch.allclose(g, e, atol=1e-5)


def test_unknown_kernel_is_a_usage_error(tiny_sam, tiny_timm):
    for model in (tiny_sam, tiny_timm):
        with pytest.raises(vitslim.UsageError, match="unknown attention kernel 'triton'"):
            vitslim.optimize(model, kernel="triton")


def test_fast_model_saves_and_loads(tiny_sam, tmp_path, photos):
    fast = vitslim.optimize(copy.deepcopy(tiny_sam))
    loaded = vitslim.load(vitslim.save(fast, tmp_path / "f.pt"))
    x = resize_batch(photos[:1], 128)
    assert torch.equal(encode(loaded, x), encode(tiny_sam, x))


def test_bench_runs_end_to_end_with_valid_json(capsys):
    import json

    from vitslim.cli import main

    main(["bench", "timm:vit_tiny_patch16_224", "timm:vit_tiny_patch16_224@0.5",
          "timm:vit_tiny_patch16_224@0.5:heads", "--fast", "--onnxruntime", "--runs", "1", "--rounds", "2", "--json"])
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [r["path"] for r in rows] == ["plain", "fast", "onnxruntime"] * 3
    assert all(r.get("error") is None and r["median_ms"] > 0 and r["rounds"] == 2 and r["runs"] == 2 for r in rows)
    assert all(r["spread_ms"][0] <= r["median_ms"] <= r["spread_ms"][1] for r in rows)
    assert all(r["speedup"] == pytest.approx(rows[0]["median_ms"] / r["median_ms"]) for r in rows)
    assert rows[3]["params"] < rows[0]["params"] and result["device_type"] == "cpu"


def test_bench_times_each_named_kernel():
    from vitslim.bench import benchmark

    kernels = ["sdpa"] if no_vector_isa else ["sdpa", "flex"]  # see FLEX
    result = benchmark(["sam-b"], img_size=64, runs=1, rounds=1, warmup=0, fast=True, kernels=kernels, device="cpu")
    assert [r["path"] for r in result["rows"]] == ["plain", "fast", *(f"fast:{k}" for k in kernels)]
    assert all(r.get("error") is None and r["median_ms"] > 0 for r in result["rows"])  # no kernel failed


def test_bench_reports_a_failing_row_and_goes_on(monkeypatch, capsys):
    from vitslim import bench
    from vitslim.cli import main

    real = bench.time_encoder

    def fail_fast_rows(encoder, x, runs, warmup):
        if any(type(m).__name__ == "FusedAttention" for m in encoder.modules()):
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
        return real(encoder, x, runs, warmup)

    monkeypatch.setattr(bench, "time_encoder", fail_fast_rows)
    result = bench.benchmark(["sam-b", "sam-b@0.5"], img_size=64, runs=1, rounds=1, warmup=0, fast=True, device="cpu")
    failed = [r for r in result["rows"] if r["path"] == "fast"]
    assert [r["error"] for r in failed] == ["RuntimeError: operation not permitted when stream is capturing"] * 2
    assert all(r["median_ms"] is None and r["speedup"] is None for r in failed)
    plain = [r for r in result["rows"] if r["path"] == "plain"]
    assert plain[0]["speedup"] == 1.0 and plain[1]["median_ms"] > 0
    main(["bench", "sam-b", "--img-size", "64", "--runs", "1", "--rounds", "1", "--warmup", "0", "--fast"])
    assert "sam-b (fast) failed: RuntimeError" in capsys.readouterr().out


def test_bench_unknown_kernel_is_one_clear_error(capsys):
    from vitslim.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "timm:vit_tiny_patch16_224", "--kernel", "triton", "--runs", "1"])
    assert exit_info.value.code == 2
    assert "error: unknown attention kernel 'triton' for timm" in capsys.readouterr().err


def test_bench_refuses_cuda_graphs_on_cpu():
    from vitslim.bench import benchmark

    with pytest.raises(vitslim.UsageError, match="CUDA graphs need a CUDA device"):
        benchmark(["timm:vit_tiny_patch16_224"], device="cpu", cuda_graphs=True)


def test_quantile_nearest_rank():
    from vitslim.bench import _quantile

    assert _quantile([3.0, 1.0], 0.9) == 3.0
    assert _quantile(list(range(1, 51)), 0.9) == 45
    assert _quantile([7.0], 0.9) == 7.0


def test_bench_spec_round_to():
    from vitslim.bench import build

    w = vitslim.describe(build("timm:vit_tiny_patch16_224@0.6/16")).widths()
    assert w["embed_dim"] % 16 == 0 and all(b["mlp_hidden"] % 16 == 0 and b["head_dim"] % 16 == 0 for b in w["blocks"])
    with pytest.raises(vitslim.UsageError, match="bad model spec"):
        build("timm:vit_tiny_patch16_224@abc")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("kernel", ["auto", "flex"])
def test_gpu_fast_path_is_exact_and_graph_capturable(kernel, tiny_sam, photos):
    """On a GPU (never in CI here): every fused kernel matches, and the fast encoder replays as a CUDA
    graph with the same output."""
    from vitslim.bench import cuda_graphed

    model = vitslim.prune(tiny_sam, 0.5, part="both", importance="magnitude", ranking="global").cuda()
    x = resize_batch(photos[:2], 128).cuda()
    plain = encode(model, x)
    fast_model = vitslim.optimize(copy.deepcopy(model), kernel=kernel)
    assert (encode(fast_model, x) - plain).abs().max().item() <= 1e-4  # TF32 may be on
    replay = cuda_graphed(fast_model.image_encoder.eval(), x)
    assert (replay(x) - plain).abs().max().item() <= 1e-4


def test_compiled_kernels_are_cached_per_cpu_capability(monkeypatch):
    """inductor's cache key misses ATEN_CPU_CAPABILITY: a flex kernel compiled under avx2 and loaded
    without the override gave outputs 0.06 off, so an override gets its own folder (a user's is kept)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from vitslim.device import compile_cache_per_capability

    default = os.path.abspath(default_cache_dir())
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "AVX2")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)  # as importing torch._dynamo leaves it
    compile_cache_per_capability()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default + "-avx2"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/somewhere/mine")
    compile_cache_per_capability()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/somewhere/mine"
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)
    compile_cache_per_capability()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == default
