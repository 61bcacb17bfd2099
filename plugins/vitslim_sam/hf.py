"""Hugging Face transformers' SAM (``SamModel``) and segment_anything's ``Sam``: the same network under
other parameter names. The mapping below is written from the two modules' structures; both directions
use it, and the widths of a checkpoint are read from its tensors' shapes (a SlimSAM-uniform checkpoint
is a SAM-B whose blocks are 168 wide with 12 heads of 14 and an MLP of 696)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vitslim.errors import UsageError, WeightsError

# (transformers name, segment_anything name): {i} and {n} stand for one name part, {rest} for the rest
_RULES = [
    ("vision_encoder.patch_embed.projection.{rest}", "image_encoder.patch_embed.proj.{rest}"),
    ("vision_encoder.pos_embed", "image_encoder.pos_embed"),
    ("vision_encoder.layers.{i}.layer_norm{n}.{rest}", "image_encoder.blocks.{i}.norm{n}.{rest}"),
    ("vision_encoder.layers.{i}.attn.{rest}", "image_encoder.blocks.{i}.attn.{rest}"),
    ("vision_encoder.layers.{i}.mlp.{rest}", "image_encoder.blocks.{i}.mlp.{rest}"),
    ("vision_encoder.neck.conv1.{rest}", "image_encoder.neck.0.{rest}"),
    ("vision_encoder.neck.layer_norm1.{rest}", "image_encoder.neck.1.{rest}"),
    ("vision_encoder.neck.conv2.{rest}", "image_encoder.neck.2.{rest}"),
    ("vision_encoder.neck.layer_norm2.{rest}", "image_encoder.neck.3.{rest}"),
    ("shared_image_embedding.positional_embedding", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    ("prompt_encoder.mask_embed.conv1.{rest}", "prompt_encoder.mask_downscaling.0.{rest}"),
    ("prompt_encoder.mask_embed.layer_norm1.{rest}", "prompt_encoder.mask_downscaling.1.{rest}"),
    ("prompt_encoder.mask_embed.conv2.{rest}", "prompt_encoder.mask_downscaling.3.{rest}"),
    ("prompt_encoder.mask_embed.layer_norm2.{rest}", "prompt_encoder.mask_downscaling.4.{rest}"),
    ("prompt_encoder.mask_embed.conv3.{rest}", "prompt_encoder.mask_downscaling.6.{rest}"),
    ("prompt_encoder.point_embed.{i}.{rest}", "prompt_encoder.point_embeddings.{i}.{rest}"),
    ("prompt_encoder.no_mask_embed.{rest}", "prompt_encoder.no_mask_embed.{rest}"),
    ("prompt_encoder.not_a_point_embed.{rest}", "prompt_encoder.not_a_point_embed.{rest}"),
    ("mask_decoder.iou_token.{rest}", "mask_decoder.iou_token.{rest}"),
    ("mask_decoder.mask_tokens.{rest}", "mask_decoder.mask_tokens.{rest}"),
    ("mask_decoder.transformer.layers.{i}.layer_norm{n}.{rest}", "mask_decoder.transformer.layers.{i}.norm{n}.{rest}"),
    ("mask_decoder.transformer.layers.{i}.self_attn.{rest}", "mask_decoder.transformer.layers.{i}.self_attn.{rest}"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{rest}",
     "mask_decoder.transformer.layers.{i}.cross_attn_token_to_image.{rest}"),
    ("mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{rest}",
     "mask_decoder.transformer.layers.{i}.cross_attn_image_to_token.{rest}"),
    ("mask_decoder.transformer.layers.{i}.mlp.{rest}", "mask_decoder.transformer.layers.{i}.mlp.{rest}"),
    ("mask_decoder.transformer.final_attn_token_to_image.{rest}", "mask_decoder.transformer.final_attn_token_to_image.{rest}"),
    ("mask_decoder.transformer.layer_norm_final_attn.{rest}", "mask_decoder.transformer.norm_final_attn.{rest}"),
    ("mask_decoder.upscale_conv1.{rest}", "mask_decoder.output_upscaling.0.{rest}"),
    ("mask_decoder.upscale_layer_norm.{rest}", "mask_decoder.output_upscaling.1.{rest}"),
    ("mask_decoder.upscale_conv2.{rest}", "mask_decoder.output_upscaling.3.{rest}"),
]
_DUPLICATE = "prompt_encoder.shared_embedding.positional_embedding"  # transformers keeps the table twice
# The decoder's small MLPs: transformers names proj_in, layers.<k>, proj_out; segment_anything counts layers.
_HF_MLP = re.compile(r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.(proj_in|proj_out|layers\.(\d+))\.(.+)$")
_SAM_MLP = re.compile(r"mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(.+)$")


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    out = "".join(re.escape(p) if i % 2 == 0 else (f"(?P<{p}>.+)" if p == "rest" else f"(?P<{p}>[^.]+)")
                  for i, p in enumerate(parts))
    return re.compile(out + "$")


_COMPILED = [(_regex(hf), hf, _regex(sam), sam) for hf, sam in _RULES]


def is_hf_state_dict(state_dict: dict) -> bool:
    return any(k.startswith("vision_encoder.") for k in state_dict)


def from_hf(state_dict: dict) -> dict:
    """segment_anything's names for a transformers ``SamModel`` state dict."""
    hidden: dict[str, int] = {}  # hidden layers of each decoder MLP
    for key in state_dict:
        m = _HF_MLP.match(key)
        if m and m.group(3) is not None:
            hidden[m.group(1)] = max(hidden.get(m.group(1), 0), int(m.group(3)) + 1)
    out = {}
    for key, value in state_dict.items():
        if key == _DUPLICATE:
            continue
        m = _HF_MLP.match(key)
        if m:
            head, layer, k, rest = m.groups()
            index = 0 if layer == "proj_in" else hidden.get(head, 0) + 1 if layer == "proj_out" else int(k) + 1
            out[f"mask_decoder.{head}.layers.{index}.{rest}"] = value
            continue
        out[_rename(key, hf_to_sam=True)] = value
    return out


def to_hf(state_dict: dict) -> dict:
    """transformers' names for a segment_anything ``Sam`` state dict (the inverse of :func:`from_hf`)."""
    last: dict[str, int] = {}
    for key in state_dict:
        m = _SAM_MLP.match(key)
        if m:
            last[m.group(1)] = max(last.get(m.group(1), 0), int(m.group(2)))
    out = {}
    for key, value in state_dict.items():
        m = _SAM_MLP.match(key)
        if m:
            head, k, rest = m.group(1), int(m.group(2)), m.group(3)
            layer = "proj_in" if k == 0 else "proj_out" if k == last[head] else f"layers.{k - 1}"
            out[f"mask_decoder.{head}.{layer}.{rest}"] = value
            continue
        out[_rename(key, hf_to_sam=False)] = value
    out[_DUPLICATE] = out["shared_image_embedding.positional_embedding"]
    return out


def _rename(key: str, hf_to_sam: bool) -> str:
    for hf_regex, hf, sam_regex, sam in _COMPILED:
        m = (hf_regex if hf_to_sam else sam_regex).match(key)
        if m:
            return (sam if hf_to_sam else hf).format(**m.groupdict())
    side = "a transformers" if hf_to_sam else "a segment_anything"
    raise WeightsError(f"unknown parameter {key} in {side} SAM state dict")


def fold_attention_scales(state_dict: dict, scales_from: list[float], scales_to: list[float],
                          prefix: str = "image_encoder.") -> dict:
    """The same attention under other scales. segment_anything's attention computes
    ``scale * q.k + q.rel_h + q.rel_w``; a pruned vitslim SAM keeps its original head dim's scale while
    transformers always uses 1 / sqrt(current head dim). Queries scaled by ``from / to`` and the rel-pos
    tables by ``to / from`` give, under scale ``to``, exactly what ``from`` gave."""
    out = dict(state_dict)
    for i, (a, b) in enumerate(zip(scales_from, scales_to)):
        if a == b:
            continue
        block = f"{prefix}blocks.{i}.attn."
        inner = out[block + "qkv.weight"].shape[0] // 3
        for name in ("qkv.weight", "qkv.bias"):
            if block + name in out:
                t = out[block + name].clone()
                t[:inner] *= a / b
                out[block + name] = t
        for name in ("rel_pos_h", "rel_pos_w"):
            if block + name in out:
                out[block + name] = out[block + name] * (b / a)
    return out


def read_hf_checkpoint(path: str | Path) -> tuple[dict, dict | None]:
    """The state dict (and ``config.json``, when there is one) of a transformers SAM checkpoint: a
    folder written by ``save_pretrained``, or a ``model.safetensors`` file."""
    from vitslim.weights import read_state_dict

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else None
    return read_state_dict(p), config


def widths_from_state_dict(state_dict: dict, prefix: str = "image_encoder.") -> dict | None:
    """The encoder's widths (see ``Structure.widths``) read off its tensors' shapes; None without the
    relative-position tables that give the head dim."""
    embed = state_dict[f"{prefix}patch_embed.proj.weight"].shape[0]
    blocks = []
    i = 0
    while f"{prefix}blocks.{i}.attn.qkv.weight" in state_dict:
        inner = state_dict[f"{prefix}blocks.{i}.attn.qkv.weight"].shape[0] // 3
        rel = state_dict.get(f"{prefix}blocks.{i}.attn.rel_pos_h")
        if rel is None:
            return None
        head_dim = rel.shape[1]
        blocks.append({"num_heads": inner // head_dim, "head_dim": head_dim,
                       "mlp_hidden": state_dict[f"{prefix}blocks.{i}.mlp.lin1.weight"].shape[0]})
        i += 1
    return {"embed_dim": embed, "blocks": blocks}


def config_from_hf(config: dict) -> dict:
    """segment_anything encoder arguments from a transformers ``SamConfig`` (widths excluded: they come
    from the tensors)."""
    v = config.get("vision_config", {})
    out = {"depth": v.get("num_hidden_layers"), "num_heads": v.get("num_attention_heads"),
           "global_attn_indexes": v.get("global_attn_indexes"), "img_size": v.get("image_size"),
           "patch_size": v.get("patch_size"), "window_size": v.get("window_size"),
           "out_chans": v.get("output_channels"), "qkv_bias": v.get("qkv_bias"), "use_rel_pos": v.get("use_rel_pos")}
    return {k: val for k, val in out.items() if val is not None}


def hf_config(widths: dict, encoder_config: dict) -> dict:
    """A transformers ``SamConfig`` dict for a uniform-width SAM; a :class:`UsageError` if the widths
    cannot be written as one (``SamVisionConfig`` has one width for the residual stream and attention,
    and one MLP width)."""
    blocks = widths["blocks"]
    inner = {b["num_heads"] * b["head_dim"] for b in blocks}
    mlp = {b["mlp_hidden"] for b in blocks}
    heads = {b["num_heads"] for b in blocks}
    if len(inner) != 1 or len(mlp) != 1 or len(heads) != 1 or inner != {widths["embed_dim"]}:
        raise UsageError(
            "this model cannot be written as a transformers SamModel: SamVisionConfig has one width for the "
            f"embedding and attention and one MLP width (here embedding {widths['embed_dim']}, attention "
            f"{sorted(inner)}, MLP {sorted(mlp)}); compress with --ranking uniform to a ratio where both "
            "widths agree (0.5 does), or load it with vitslim.load")
    c = encoder_config
    return {
        "model_type": "sam", "architectures": ["SamModel"],
        "vision_config": {"hidden_size": widths["embed_dim"], "num_hidden_layers": len(blocks),
                          "num_attention_heads": heads.pop(), "mlp_dim": mlp.pop(), "image_size": c["img_size"],
                          "patch_size": c["patch_size"], "window_size": c["window_size"],
                          "global_attn_indexes": list(c["global_attn_indexes"]), "output_channels": c["out_chans"],
                          "qkv_bias": c["qkv_bias"], "use_rel_pos": c["use_rel_pos"], "use_abs_pos": True,
                          "layer_norm_eps": 1e-6, "num_pos_feats": c["out_chans"] // 2},
        "prompt_encoder_config": {"hidden_size": c["out_chans"], "image_size": c["img_size"],
                                  "patch_size": c["patch_size"]},
        "mask_decoder_config": {"hidden_size": c["out_chans"]},
    }
