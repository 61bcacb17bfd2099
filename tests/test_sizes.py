"""Real SAM-B sizes (random weights): the paper's figures, and inspect on the saved files."""

import json

import pytest

import vitslim
from vitslim.cli import main


def test_sam_b_dense_sizes():
    r = vitslim.inspect("sam-b")
    assert r["encoder"]["params"] == 89_670_912  # 89.67M
    assert round(r["encoder"]["macs"] / 1e9, 1) == 369.0
    assert round(r["model"]["params"] / 1e6, 1) == 93.7
    assert round(r["model"]["macs"] / 1e9) == 372
    assert r["encoder"]["macs_with_attention"] > 1.3 * r["encoder"]["macs"]


@pytest.mark.parametrize("ratio,params_m,macs_g", [(0.5, 26, 98), (0.77, 9.1, 23)])
def test_sam_b_pruned_matches_slimsam_figures(ratio, params_m, macs_g, tmp_path, capsys):
    """SlimSAM-50: 26M / 98G; SlimSAM-77: 9.1M / 23G (whole model). Uniform widths here keep
    floor((1 - ratio) * width) channels; the paper's models differ by a few channels per block."""
    model = vitslim.create("sam-b", pretrained=False)
    pruned = vitslim.prune(model, ratio, part="both", importance="magnitude", ranking="uniform")
    path = vitslim.save(pruned, tmp_path / "p.pt")
    r = vitslim.inspect(path)
    assert abs(r["model"]["params"] / 1e6 - params_m) / params_m < 0.12
    assert abs(r["model"]["macs"] / 1e9 - macs_g) / macs_g < 0.12
    main(["inspect", str(path), "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["widths"] == r["widths"] and shown["history"][0]["ratio"] == ratio
    main(["inspect", str(path)])
    table = capsys.readouterr().out
    assert "MLP hidden" in table and str(r["widths"]["blocks"][11]["mlp_hidden"]) in table

