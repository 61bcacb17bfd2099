"""The SAM 2 family: builds ``SAM2Base`` models (SAM 2.1 configs) and describes their Hiera image encoder.

Hiera's residual width changes from stage to stage, so the description has one residual stream per stage:
the first block of a stage reads the previous stage's stream (``norm1``, ``attn.qkv`` and the shortcut
``proj``) and writes its own (``attn.proj``, ``proj``'s outputs). Its queries are max-pooled (a quarter of
the keys). The FPN neck reads every stage and keeps its output width (256), so the mask decoder and the
memory modules are untouched.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from vitslim import Family
from vitslim.errors import UsageError
from vitslim.info import set_info
from vitslim.structure import (
    AttentionSpec,
    BlockSpec,
    MlpSpec,
    ResidualStream,
    Structure,
)
from vitslim.weights import fetch, load_whole_or_part, read_state_dict

INSTALL = "pip install 'setuptools>=70.1' && SAM2_BUILD_CUDA=0 pip install --no-build-isolation 'vitslim[sam2]'"
_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
# name -> (SAM 2.1 config in the sam2 package, Hiera trunk arguments, checkpoint file, its SHA-256)
SIZES: dict[str, tuple[str, dict, str, str]] = {
    "sam2-t": (
        "configs/sam2.1/sam2.1_hiera_t.yaml",
        {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 7, 2], "global_att_blocks": [5, 7, 9],
         "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7]},
        "sam2.1_hiera_tiny.pt", "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69",
    ),
    "sam2-s": (
        "configs/sam2.1/sam2.1_hiera_s.yaml",
        {"embed_dim": 96, "num_heads": 1, "stages": [1, 2, 11, 2], "global_att_blocks": [7, 10, 13],
         "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [7, 7]},
        "sam2.1_hiera_small.pt", "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38",
    ),
    "sam2-b+": (
        "configs/sam2.1/sam2.1_hiera_b+.yaml",
        {"embed_dim": 112, "num_heads": 2, "stages": [2, 3, 16, 3], "global_att_blocks": [12, 16, 20],
         "window_spec": [8, 4, 14, 7], "window_pos_embed_bkg_spatial_size": [14, 14]},
        "sam2.1_hiera_base_plus.pt", "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5",
    ),
    "sam2-l": (
        "configs/sam2.1/sam2.1_hiera_l.yaml",
        {"embed_dim": 144, "num_heads": 2, "stages": [2, 6, 36, 4], "global_att_blocks": [23, 33, 43],
         "window_spec": [8, 4, 16, 8], "window_pos_embed_bkg_spatial_size": [7, 7]},
        "sam2.1_hiera_large.pt", "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318",
    ),
}
TRUNK_ARGS = ("embed_dim", "num_heads", "stages", "global_att_blocks", "window_spec", "window_pos_embed_bkg_spatial_size")
IMG_SIZE = 1024
D_MODEL = 256  # the neck's output width, which the prompt encoder and mask decoder work at


def _value(v: Any) -> str:
    """A hydra override value: lists as ``[a,b]``."""
    return "[" + ",".join(str(x) for x in v) + "]" if isinstance(v, (list, tuple)) else str(v)


def build_sam2_model(name: str, config: dict[str, Any]) -> nn.Module:
    """A ``SAM2Base`` from ``name``'s SAM 2.1 config with ``config``'s trunk arguments, ``img_size`` and
    ``d_model`` (the neck's output width and so the decoder's; small test models); the neck follows the
    trunk's stage widths. Random weights, on the CPU, in eval mode."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError:
        raise UsageError(f"SAM 2 models need the sam2 package: {INSTALL}") from None
    cfg_file, base = SIZES[name][0], SIZES[name][1]
    trunk = {**base, **{k: v for k, v in config.items() if k in TRUNK_ARGS}}
    stages = len(trunk["stages"])
    overrides = [f"++model.image_encoder.trunk.{k}={_value(v)}" for k, v in trunk.items()]
    overrides.append("++model.image_encoder.neck.backbone_channel_list="
                     + _value([trunk["embed_dim"] * 2 ** i for i in reversed(range(stages))]))
    overrides.append(f"++model.image_size={config.get('img_size', IMG_SIZE)}")
    if config.get("d_model", D_MODEL) != D_MODEL:
        overrides += [f"++model.image_encoder.neck.d_model={config['d_model']}",
                      f"++model.image_encoder.neck.position_encoding.num_pos_feats={config['d_model']}"]
    return build_sam2(cfg_file, None, device="cpu", mode="eval", hydra_overrides_extra=overrides)


@functools.lru_cache(maxsize=4)
def _transforms(size: int):
    """SAM 2's image transforms for one input size (built once: they are TorchScript-compiled)."""
    from sam2.utils.transforms import SAM2Transforms

    return SAM2Transforms(size, mask_threshold=0.0)


class Sam2Family(Family):
    """SAM 2 (2.1 checkpoints); the image encoder (Hiera trunk + FPN neck) is what gets compressed."""

    name = "sam2"
    # the FPN levels' mean squares differ by four orders of magnitude (shapes-sam2 teacher: 1.1, 3.8 and
    # 27,700), so raw MSEs align only the coarsest level; per-level scaling, in distillation and in the
    # disturbed-Taylor importance, measured better on 2 seeds (box agreement with the teacher 0.702 ->
    # 0.789 at 0.5 @ 1%, docs/quality.md)
    loss_scale = "teacher"

    def model_names(self) -> list[str]:
        return list(SIZES)

    def handles(self, name: str) -> bool:
        return name in SIZES

    def create(self, name: str, pretrained: bool = True, checkpoint: str | None = None, **config: Any):
        if name not in SIZES:
            raise UsageError(f"unknown SAM 2 size '{name}': choose one of {', '.join(SIZES)}")
        unknown = set(config) - set(TRUNK_ARGS) - {"img_size", "d_model"}
        if unknown:
            raise UsageError(f"unknown SAM 2 encoder argument(s): {', '.join(sorted(unknown))}")
        weights, source = None, None  # read (or download) first: a bad file fails before SAM 2 is built
        if checkpoint is not None:
            weights, source = read_state_dict(checkpoint), str(checkpoint)
        elif pretrained:
            _, _, filename, sha256 = SIZES[name]
            path = fetch(_URL + filename, sha256)
            weights, source = read_state_dict(path), str(path)
        model = build_sam2_model(name, config)
        if weights is not None:
            load_whole_or_part(model, "image_encoder", weights, source)
        set_info(model, self.name, name, config)
        return model

    def identify(self, model: nn.Module):
        try:
            from sam2.modeling.sam2_base import SAM2Base
        except ImportError:
            return None
        if not isinstance(model, SAM2Base):
            return None
        if model.no_obj_embed_spatial is None:  # SAM 2.1 configs add it; a file could not rebuild this model
            raise UsageError("this is a SAM 2.0 model: the sam2 family builds SAM 2.1 (configs/sam2.1), "
                             "whose files it can rebuild; build the model from a SAM 2.1 config")
        trunk = model.image_encoder.trunk
        ends = trunk.stage_ends
        config = {  # block.dim / dim_out keep their built values (see set_residual_widths)
            "embed_dim": trunk.blocks[0].dim, "num_heads": trunk.blocks[0].attn.num_heads,
            "stages": [e - s for e, s in zip(ends, [-1, *ends[:-1]])],
            "global_att_blocks": list(trunk.global_att_blocks), "window_spec": list(trunk.window_spec),
            "window_pos_embed_bkg_spatial_size": list(trunk.window_pos_embed_bkg_spatial_size),
            "img_size": model.image_size, "d_model": model.hidden_dim,
        }
        defaults = {"img_size": IMG_SIZE, "d_model": D_MODEL}
        extra = {k: v for k, v in config.items() if k in defaults and v != defaults[k]}
        for name, (_, base, _, _) in SIZES.items():
            if all(config[k] == v for k, v in base.items()):
                return name, extra
        return "sam2-t", {**{k: v for k, v in config.items() if k not in defaults}, **extra}

    def encoder(self, model: nn.Module) -> nn.Module:
        return model.image_encoder

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        return (3, model.image_size, model.image_size)

    def input_size_config(self, size: int) -> dict[str, Any]:
        if size % 32:
            raise UsageError(f"SAM 2 input size must be a multiple of 32, got {size}")
        return {"img_size": size}

    def preprocess(self, model: nn.Module, image: Any) -> torch.Tensor:
        """SAM 2's own preprocessing: resize to a square of ``image_size``, ImageNet normalisation."""
        import numpy as np

        return _transforms(model.image_size)(np.asarray(image.convert("RGB")))

    def output_features(self, output: dict) -> list[torch.Tensor]:
        """The FPN levels the mask decoder reads (high-resolution maps included): ``backbone_fpn``."""
        return list(output["backbone_fpn"])

    def evaluate(self, student, teacher, images, annotations=None, overlays=None) -> dict:
        from vitslim_sam.evaluate import evaluate_prompts

        from .predictor import Sam2Prompter

        return evaluate_prompts(Sam2Prompter(student), Sam2Prompter(teacher), images, annotations, overlays=overlays)

    def extra_cost(self, model: nn.Module) -> tuple[int, int]:
        """Everything outside the image encoder (prompt encoder, mask decoder, video memory modules): its
        parameters, and the MACs of one point prompt as ``SAM2ImagePredictor`` runs it (the decoder's
        high-resolution projections included)."""
        import torch
        from torch import nn
        from vitslim.cost import count_macs

        params, _ = super().extra_cost(model)
        grid = model.sam_image_embedding_size
        dim = model.sam_prompt_embed_dim

        class _Decode(nn.Module):
            def __init__(self, sam):
                super().__init__()
                self.sam = sam

            def forward(self, emb):
                sam, decoder = self.sam, self.sam.sam_mask_decoder
                high_res = None
                if sam.use_high_res_features_in_sam:
                    high_res = [decoder.conv_s0(emb.new_zeros(1, dim, 4 * grid, 4 * grid)),
                                decoder.conv_s1(emb.new_zeros(1, dim, 2 * grid, 2 * grid))]
                points = (emb.new_zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.int))
                sparse, dense = sam.sam_prompt_encoder(points=points, boxes=None, masks=None)
                return decoder(image_embeddings=emb, image_pe=sam.sam_prompt_encoder.get_dense_pe(),
                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                               multimask_output=True, repeat_image=False, high_res_features=high_res)[0]

        return params, count_macs(_Decode(model).eval(), torch.zeros(1, dim, grid, grid))

    def set_attention_shape(self, attn: nn.Module, num_heads: int, head_dim: int) -> None:
        attn.num_heads = num_heads

    def on_head_dim_pruned(self, attn: nn.Module, old_head_dim: int) -> None:
        """SAM 2 scales attention by the *current* head dim (SDPA's default); fold the ratio into k so that
        the pruned attention equals the original with the removed channels zeroed."""
        import torch

        heads = attn.num_heads
        head_dim = attn.qkv.out_features // 3 // heads
        rows = slice(heads * head_dim, 2 * heads * head_dim)
        with torch.no_grad():
            attn.qkv.weight[rows] *= (head_dim / old_head_dim) ** 0.5
            if attn.qkv.bias is not None:
                attn.qkv.bias[rows] *= (head_dim / old_head_dim) ** 0.5

    def set_residual_widths(self, encoder: nn.Module, widths: list[int]) -> None:
        """Record the stage widths where Hiera and its neck list them. Blocks keep ``dim``/``dim_out`` as
        built: Hiera's forward reads their inequality as "this block has a shortcut projection", which
        pruning never changes, even where two stages end up with the same width."""
        encoder.trunk.channel_list = list(reversed(widths))
        encoder.neck.backbone_channel_list = list(reversed(widths))

    def describe(self, model: nn.Module) -> Structure:
        enc = self.encoder(model)
        trunk = enc.trunk
        streams: list[list[tuple[str, int]]] = [[]]
        roots = ["trunk.patch_embed.proj"]
        widths = [trunk.patch_embed.proj.out_channels]
        streams[0] += [("trunk.patch_embed.proj.weight", 0), ("trunk.pos_embed", 1), ("trunk.pos_embed_window", 1)]
        if trunk.patch_embed.proj.bias is not None:
            streams[0].append(("trunk.patch_embed.proj.bias", 0))
        side = model.image_size // trunk.patch_embed.proj.stride[0]  # token grid side at the block's input
        stage_of_output = []  # the stream each block writes
        blocks = []
        for i, blk in enumerate(trunk.blocks):
            p = f"trunk.blocks.{i}"
            s_in = len(streams) - 1
            if hasattr(blk, "proj"):  # a stage change: a new residual stream starts at the shortcut projection
                streams.append([(f"{p}.proj.weight", 0), (f"{p}.proj.bias", 0)])
                streams[s_in].append((f"{p}.proj.weight", 1))
                roots.append(f"{p}.proj")
                widths.append(blk.proj.out_features)
            s_out = len(streams) - 1
            stage_of_output.append(s_out)
            streams[s_in] += [(f"{p}.norm1.weight", 0), (f"{p}.norm1.bias", 0), (f"{p}.attn.qkv.weight", 1)]
            streams[s_out] += [(f"{p}.attn.proj.weight", 0), (f"{p}.attn.proj.bias", 0), (f"{p}.norm2.weight", 0),
                               (f"{p}.norm2.bias", 0), (f"{p}.mlp.layers.0.weight", 1),
                               (f"{p}.mlp.layers.1.weight", 0), (f"{p}.mlp.layers.1.bias", 0)]
            attn = blk.attn
            heads = attn.num_heads
            window = blk.window_size
            seq_side, seqs = (window, math.ceil(side / window) ** 2) if window > 0 else (side, 1)
            stride = blk.q_stride[0] if blk.q_stride else 1
            blocks.append(BlockSpec(
                name=p,
                attn=AttentionSpec(
                    module=f"{p}.attn", qkv=f"{p}.attn.qkv", proj=f"{p}.attn.proj", num_heads=heads,
                    head_dim=attn.qkv.out_features // 3 // heads, seq_len=seq_side * seq_side, num_seqs=seqs,
                    q_len=(seq_side // stride) ** 2 if stride > 1 else 0,
                ),
                mlp=MlpSpec(fc1=f"{p}.mlp.layers.0", fc2=f"{p}.mlp.layers.1", hidden=blk.mlp.layers[0].out_features),
            ))
            side //= stride
        # the neck's lateral convs read each stage's last block, lowest resolution first
        ends = trunk.stage_ends
        for j, conv in enumerate(enc.neck.convs):
            streams[stage_of_output[ends[len(ends) - 1 - j]]].append((f"neck.convs.{j}.conv.weight", 1))
        return Structure(
            embed_dim=widths[0], blocks=blocks, embedding_root=roots[0], embedding_params=streams[0],
            later_streams=[ResidualStream(w, r, s) for w, r, s in zip(widths[1:], roots[1:], streams[1:])],
        )
