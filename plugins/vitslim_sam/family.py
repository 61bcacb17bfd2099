"""The SAM family: builds ``Sam`` models and describes their ViT image encoder."""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from vitslim import Family
from vitslim.errors import UsageError
from vitslim.info import set_info
from vitslim.structure import AttentionSpec, BlockSpec, MlpSpec, Structure
from vitslim.weights import fetch, load_whole_or_part, read_state_dict

from .hf import (config_from_hf, fold_attention_scales, from_hf, is_hf_state_dict, read_hf_checkpoint,
                 widths_from_state_dict)

_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
# name -> (encoder config, checkpoint file, its published MD5)
SIZES: dict[str, tuple[dict, str, str]] = {
    "sam-b": (
        {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
        "sam_vit_b_01ec64.pth", "01ec64d29a2fca3f0661936605ae66f8",
    ),
    "sam-l": (
        {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": [5, 11, 17, 23]},
        "sam_vit_l_0b3195.pth", "0b3195507c641ddb6910d2bb5adee89c",
    ),
    "sam-h": (
        {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": [7, 15, 23, 31]},
        "sam_vit_h_4b8939.pth", "4b8939a88964f0f4ff5f5b2642c598a6",
    ),
}
# Encoder arguments shared by every size (segment_anything/build_sam.py).
DEFAULTS: dict[str, Any] = {
    "img_size": 1024, "patch_size": 16, "mlp_ratio": 4.0, "out_chans": 256, "window_size": 14,
    "qkv_bias": True, "use_rel_pos": True,
}


def build_sam(config: dict[str, Any]) -> nn.Module:
    """A ``Sam`` whose image encoder follows ``config``; prompt encoder and mask decoder as in SAM."""
    from segment_anything.modeling import (
        ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer,
    )
    from torch import nn

    cfg = {**DEFAULTS, **config}
    prompt_dim = cfg["out_chans"]
    grid = cfg["img_size"] // cfg["patch_size"]
    encoder = ImageEncoderViT(
        img_size=cfg["img_size"], patch_size=cfg["patch_size"], embed_dim=cfg["embed_dim"],
        depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
        out_chans=prompt_dim, qkv_bias=cfg["qkv_bias"], use_rel_pos=cfg["use_rel_pos"],
        window_size=cfg["window_size"], global_attn_indexes=tuple(cfg["global_attn_indexes"]),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
    )
    sam = Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(cfg["img_size"], cfg["img_size"]), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=prompt_dim, mlp_dim=2048, num_heads=8),
            transformer_dim=prompt_dim, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def _hf_scales(model: nn.Module) -> list[float]:
    """transformers' attention scale per block: 1 / sqrt(the current head dim)."""
    return [(b.attn.qkv.out_features // 3 // b.attn.num_heads) ** -0.5 for b in model.image_encoder.blocks]


def _check_size(name: str, config: dict) -> None:
    """A transformers checkpoint of another SAM size than the name asked for is a one-line error."""
    depth = config.get("depth")
    for other, (base, _, _) in SIZES.items():
        if depth == base["depth"] and config.get("global_attn_indexes") == base["global_attn_indexes"] and other != name:
            raise UsageError(f"the checkpoint is a {other} (its config.json has {depth} layers): use that name")


class SamFamily(Family):
    """Segment Anything; the image encoder is what gets compressed."""

    name = "sam"

    def model_names(self) -> list[str]:
        return list(SIZES)

    def handles(self, name: str) -> bool:
        return name in SIZES

    def create(self, name: str, pretrained: bool = True, checkpoint: str | None = None, **config: Any):
        if name not in SIZES:
            raise UsageError(f"unknown SAM size '{name}': choose one of {', '.join(SIZES)}")
        base, filename, md5 = SIZES[name]
        unknown = set(config) - set(DEFAULTS) - set(base)
        if unknown:
            raise UsageError(f"unknown SAM encoder argument(s): {', '.join(sorted(unknown))}")
        weights, source = None, None  # read (or download) first: a bad file fails before SAM is built
        if checkpoint is not None:
            weights, source = read_state_dict(checkpoint), str(checkpoint)
            from_transformers = is_hf_state_dict(weights)
            if from_transformers:  # transformers' SamModel: its names, its config.json, its attention scale
                _, hf = read_hf_checkpoint(checkpoint)
                weights = from_hf(weights)
                config = {**(config_from_hf(hf) if hf else {}), **config}
                _check_size(name, config)
        elif pretrained:
            path = fetch(_URL + filename, md5, algorithm="md5")
            weights, source = read_state_dict(path), str(path)
        model = build_sam({**base, **config})
        if weights is not None:
            self._fit_widths(model, weights)  # a pruned checkpoint (SlimSAM's, vitslim's) has its own widths
            if checkpoint is not None and from_transformers:
                weights = fold_attention_scales(weights, _hf_scales(model), [b.attn.scale for b in model.image_encoder.blocks])
            load_whole_or_part(model, "image_encoder", weights, source)
        set_info(model, self.name, name, config)
        return model

    def _fit_widths(self, model: nn.Module, state_dict: dict) -> None:
        """Give the encoder the widths the checkpoint's tensors have, when they differ from the base's."""
        from vitslim.reshape import apply_widths

        prefix = "image_encoder." if any(k.startswith("image_encoder.") for k in state_dict) else ""
        if f"{prefix}patch_embed.proj.weight" not in state_dict:
            return  # not a SAM state dict: load_into explains
        widths = widths_from_state_dict(state_dict, prefix)
        structure = self.describe(model)
        if widths is not None and len(widths["blocks"]) == len(structure.blocks) and widths != structure.widths():
            apply_widths(self.encoder(model), structure, widths, self)

    def open_folder(self, folder) -> nn.Module | None:
        """A transformers ``SamModel`` folder (``config.json`` with model_type sam): SAM-B, -L or -H by its
        depth, with the checkpoint's widths (a SlimSAM-uniform folder is a pruned SAM-B)."""
        import json
        from pathlib import Path

        config_file = Path(folder, "config.json")
        if not config_file.is_file():
            return None
        hf = json.loads(config_file.read_text())
        if hf.get("model_type") != "sam":
            return None
        overrides = config_from_hf(hf)
        name = next((n for n, (base, _, _) in SIZES.items() if base["depth"] == overrides.get("depth")
                     and base["global_attn_indexes"] == overrides.get("global_attn_indexes")), "sam-b")
        return self.create(name, pretrained=False, checkpoint=str(folder))

    def identify(self, model: nn.Module):
        from segment_anything.modeling import Sam

        if not isinstance(model, Sam):
            return None
        enc = model.image_encoder
        config = {
            "img_size": enc.img_size, "patch_size": enc.patch_embed.proj.kernel_size[0],
            "embed_dim": enc.patch_embed.proj.out_channels, "depth": len(enc.blocks),
            "num_heads": enc.blocks[0].attn.num_heads,
            "mlp_ratio": enc.blocks[0].mlp.lin1.out_features / enc.patch_embed.proj.out_channels,
            "out_chans": enc.neck[0].out_channels, "window_size": max(b.window_size for b in enc.blocks),
            "qkv_bias": enc.blocks[0].attn.qkv.bias is not None,
            "use_rel_pos": enc.blocks[0].attn.use_rel_pos,
            "global_attn_indexes": [i for i, b in enumerate(enc.blocks) if b.window_size == 0],
        }
        for name, (base, _, _) in SIZES.items():
            if all(config[k] == v for k, v in base.items()):
                extra = {k: v for k, v in config.items() if k not in base and DEFAULTS.get(k) != v}
                return name, extra
        return "sam-b", {k: v for k, v in config.items() if DEFAULTS.get(k) != v}

    def encoder(self, model: nn.Module) -> nn.Module:
        return model.image_encoder

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        size = self.encoder(model).img_size
        return (3, size, size)

    def input_size_config(self, size: int) -> dict[str, Any]:
        return {"img_size": size}

    def preprocess(self, model: nn.Module, image: Any) -> torch.Tensor:
        """SAM's own preprocessing: longest side to img_size, normalise, pad to a square."""
        import numpy as np
        import torch
        from segment_anything.utils.transforms import ResizeLongestSide

        arr = ResizeLongestSide(self.encoder(model).img_size).apply_image(np.asarray(image))
        x = torch.as_tensor(arr).permute(2, 0, 1).float()
        with torch.no_grad():
            return model.preprocess(x[None].to(model.pixel_mean.device))[0].cpu()

    def optimize(self, model: nn.Module, kernel: str = "auto") -> nn.Module:
        """Fused attention (rel-pos terms inside a fused kernel, see ``fast.py``); state dict and
        outputs unchanged."""
        from .fast import fuse_attention

        fuse_attention(self.encoder(model), kernel)
        return model

    def export_hf(self, model: nn.Module, folder) -> None:
        """``config.json`` + ``model.safetensors`` that ``transformers.SamModel.from_pretrained`` loads; only
        for uniform widths whose attention width equals the embedding width (SamVisionConfig's shape)."""
        import json
        from pathlib import Path

        from safetensors.torch import save_file

        from vitslim.info import get_info

        from .hf import hf_config, to_hf

        info = get_info(model) or {}
        base = SIZES.get(info.get("name"), SIZES["sam-b"])[0]
        config = hf_config(self.describe(model).widths(), {**DEFAULTS, **base, **info.get("config", {})})
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        state = to_hf(fold_attention_scales(state, [b.attn.scale for b in model.image_encoder.blocks], _hf_scales(model)))
        state = {k: v.clone() for k, v in state.items()}  # transformers keeps one table twice: no shared memory
        Path(folder, "config.json").write_text(json.dumps(config, indent=2))
        save_file(state, str(Path(folder, "model.safetensors")), metadata={"format": "pt"})

    def evaluate(self, student, teacher, images, annotations=None, overlays=None) -> dict:
        from .evaluate import evaluate_sam

        return evaluate_sam(student, teacher, images, annotations, overlays=overlays)

    def describe(self, model: nn.Module) -> Structure:
        enc = self.encoder(model)
        grid = enc.img_size // enc.patch_embed.proj.stride[0]
        emb: list[tuple[str, int]] = [("patch_embed.proj.weight", 0)]
        if enc.patch_embed.proj.bias is not None:
            emb.append(("patch_embed.proj.bias", 0))
        if enc.pos_embed is not None:
            emb.append(("pos_embed", 3))
        blocks = []
        for i, blk in enumerate(enc.blocks):
            p = f"blocks.{i}"
            attn = blk.attn
            heads = attn.num_heads
            head_dim = attn.qkv.out_features // 3 // heads
            emb += [(f"{p}.norm1.weight", 0), (f"{p}.norm1.bias", 0), (f"{p}.attn.qkv.weight", 1),
                    (f"{p}.attn.proj.weight", 0), (f"{p}.norm2.weight", 0), (f"{p}.norm2.bias", 0),
                    (f"{p}.mlp.lin1.weight", 1), (f"{p}.mlp.lin2.weight", 0)]
            emb += [(f"{p}.attn.proj.bias", 0)] if attn.proj.bias is not None else []
            emb += [(f"{p}.mlp.lin2.bias", 0)] if blk.mlp.lin2.bias is not None else []
            if blk.window_size > 0:
                side = blk.window_size
                seqs = math.ceil(grid / side) ** 2
            else:
                side, seqs = grid, 1
            rel = [(f"{p}.attn.rel_pos_h", 1), (f"{p}.attn.rel_pos_w", 1)] if attn.use_rel_pos else []
            blocks.append(BlockSpec(
                name=p,
                attn=AttentionSpec(
                    module=f"{p}.attn", qkv=f"{p}.attn.qkv", proj=f"{p}.attn.proj", num_heads=heads,
                    head_dim=head_dim, head_dim_params=rel, seq_len=side * side, num_seqs=seqs,
                    rel_pos=(side, side) if attn.use_rel_pos else None,
                ),
                mlp=MlpSpec(fc1=f"{p}.mlp.lin1", fc2=f"{p}.mlp.lin2", hidden=blk.mlp.lin1.out_features),
            ))
        emb.append(("neck.0.weight", 1))
        return Structure(
            embed_dim=enc.patch_embed.proj.out_channels, blocks=blocks,
            embedding_root="patch_embed.proj", embedding_params=emb,
        )

    def extra_cost(self, model: nn.Module) -> tuple[int, int]:
        """Prompt encoder + mask decoder: their parameters, and MACs for one point prompt."""
        import torch
        from torch import nn
        from vitslim.cost import count_macs

        params, _ = super().extra_cost(model)
        grid = model.prompt_encoder.image_embedding_size
        dim = model.prompt_encoder.embed_dim

        class _Decode(nn.Module):
            def __init__(self, sam):
                super().__init__()
                self.sam = sam

            def forward(self, emb):
                points = (torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int))
                sparse, dense = self.sam.prompt_encoder(points=points, boxes=None, masks=None)
                return self.sam.mask_decoder(emb, self.sam.prompt_encoder.get_dense_pe(), sparse, dense, True)[0]

        return params, count_macs(_Decode(model), torch.zeros(1, dim, *grid))
