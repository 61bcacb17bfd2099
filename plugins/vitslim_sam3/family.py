"""The SAM 3 family: builds transformers' ``Sam3Model`` (Segment Anything 3: concept prompts by text or
box exemplar) and describes its Perception-Encoder ViT and FPN neck, the part that gets compressed.

Why transformers' implementation (``transformers.Sam3Model``) and not Meta's ``sam3`` package: the
package imports triton at module level and allocates on CUDA while the model is built
(``position_encoding.py``, ``decoder.py``), so it cannot build a model on a CPU-only machine, and its
wheel lacks the tokenizer's vocabulary; transformers' builds anywhere, needs no triton, and its
``Sam3Processor`` is the predictor most users call. A compressed file loads back as a ``Sam3Model``.

What moves together (checked against torch-pruning's graph, like every family):

- the residual width: the patch embedding's rows, the tiled position embedding (its channel axis),
  ``layer_norm`` (ln_pre), every block's norms, the inputs of q/k/v, the outputs of o_proj and fc2, and
  the first layer of each FPN level (the transposed convolutions read it on their input axis, the 1x1
  projections of the 1x and 0.5x levels on theirs);
- per block, whole heads (q, k, v rows and o_proj columns of a head together) and MLP hidden channels.
  Head dims are not pruned: every block turns q and k by a rotary table over all of a head's channels
  (``rotary_emb``), which a head-dim cut would have to slice per block; whole heads keep it exact.

Kept: the FPN's output width (256) and its inner widths, the token grid (72 x 72 at 1008), the text
encoder, the DETR encoder and decoder, the geometry encoder and the mask decoder.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from vitslim import Family
from vitslim.errors import UsageError, WeightsError
from vitslim.info import set_info
from vitslim.structure import AttentionSpec, BlockSpec, MlpSpec, Structure

NAMES = ("sam3",)
HUB_REPO = "facebook/sam3"  # gated on the Hugging Face hub: accept the license there first
INSTALL = "pip install 'transformers>=5.0' torchvision"
# the keys of a vitslim config: overrides of transformers' Sam3 sub-configs (small models for tests)
SECTIONS = {"vision": "backbone_config", "neck": "vision_config", "text": "text_config",
            "geometry": "geometry_encoder_config", "detr_encoder": "detr_encoder_config",
            "detr_decoder": "detr_decoder_config", "mask_decoder": "mask_decoder_config"}


def _transformers():
    try:
        import transformers
        from transformers import Sam3Config, Sam3Model  # noqa: F401
    except ImportError:
        raise UsageError(f"SAM 3 models need transformers 5 (with its Sam3Model): {INSTALL}") from None
    return transformers


def sam3_config(config: dict[str, Any]):
    """transformers' ``Sam3Config``: the official SAM 3 sizes, with ``config``'s overrides per section."""
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise UsageError(f"unknown SAM 3 config section(s) {', '.join(sorted(unknown))}: choose from "
                         f"{', '.join(SECTIONS)}")
    tf = _transformers()
    vision = tf.Sam3VisionConfig(backbone_config=tf.Sam3ViTConfig(**config.get("vision", {})),
                                 **config.get("neck", {}))
    return tf.Sam3Config(vision_config=vision, text_config=config.get("text"),
                         geometry_encoder_config=config.get("geometry"), detr_encoder_config=config.get("detr_encoder"),
                         detr_decoder_config=config.get("detr_decoder"), mask_decoder_config=config.get("mask_decoder"))


def build_sam3(config: dict[str, Any]) -> nn.Module:
    """A ``Sam3Model`` with random weights, in eval mode, with SDPA attention."""
    cfg = sam3_config(config)  # says how to install transformers when it is missing
    from transformers import Sam3Model

    cfg._attn_implementation = "sdpa"
    return Sam3Model(cfg).eval()


def _hub_weights() -> dict[str, Any]:
    """The official weights from the hub (cached by huggingface_hub; its download checks the file's
    SHA-256 against the hub's record), or one clear line offline or without access."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(HUB_REPO, "model.safetensors")
    except Exception as exc:  # noqa: BLE001 - offline, gated, no token: all end the same way
        raise WeightsError(f"cannot download {HUB_REPO} ({type(exc).__name__}: the repository is gated, and "
                           f"this machine may be offline): pass --checkpoint PATH (its model.safetensors, or a "
                           f"transformers SAM 3 folder), or --random-weights") from None
    from safetensors.torch import load_file

    return load_file(path)


class Sam3Family(Family):
    """SAM 3 (``transformers.Sam3Model``); its vision encoder (ViT trunk + FPN neck) is compressed."""

    name = "sam3"

    def model_names(self) -> list[str]:
        return list(NAMES)

    def handles(self, name: str) -> bool:
        return name in NAMES

    def create(self, name: str, pretrained: bool = True, checkpoint: str | None = None, **config: Any):
        if name not in NAMES:
            raise UsageError(f"unknown SAM 3 model '{name}': choose one of {', '.join(NAMES)}")
        weights, source = None, None  # read (or download) first: a bad file fails before SAM 3 is built
        if checkpoint is not None:
            from vitslim.weights import read_state_dict

            weights, source = read_state_dict(checkpoint), str(checkpoint)
            if any(k.startswith(("detector.backbone", "tracker.")) for k in weights):
                raise WeightsError(f"{checkpoint} is Meta's sam3.pt (the sam3 package's layout): pass the "
                                   f"transformers weights instead ({HUB_REPO}'s model.safetensors)")
        elif pretrained:
            weights, source = _hub_weights(), HUB_REPO
        model = build_sam3(config)
        if weights is not None:
            from vitslim.weights import load_whole_or_part

            load_whole_or_part(model, "vision_encoder", weights, source)
        set_info(model, self.name, name, config)
        return model

    def identify(self, model: nn.Module):
        try:
            from transformers import Sam3Model
        except ImportError:
            return None
        if not isinstance(model, Sam3Model):
            return None
        default = sam3_config({}).to_dict()
        found = model.config.to_dict()
        config = {}
        for section, key in SECTIONS.items():
            here = found["vision_config"] if section == "neck" else found.get(key)
            base = default["vision_config"] if section == "neck" else default.get(key)
            if section == "vision":
                here, base = found["vision_config"]["backbone_config"], default["vision_config"]["backbone_config"]
            diff = {k: v for k, v in (here or {}).items() if k not in ("backbone_config", "transformers_version")
                    and (base or {}).get(k) != v and not k.startswith("_")}
            if diff:
                config[section] = diff
        return "sam3", config

    def encoder(self, model: nn.Module) -> nn.Module:
        return model.vision_encoder

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        size = model.config.vision_config.backbone_config.image_size
        size = size if isinstance(size, int) else size[0]
        return (3, size, size)

    def preprocess(self, model: nn.Module, image: Any) -> torch.Tensor:
        """SAM 3's own preprocessing: resize to the square input size (bilinear), scale to [-1, 1]."""
        import numpy as np
        import torch
        import torch.nn.functional as F

        size = self.input_shape(model)[1]
        x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float() / 255
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        return (x - 0.5) / 0.5

    def output_features(self, output: Any) -> list[torch.Tensor]:
        """The FPN levels ``Sam3Model`` reads (it drops the 0.5x level): the DETR encoder and decoder
        read the 1x level, the mask decoder all three."""
        return list(output.fpn_hidden_states[:-1])

    def graph_outputs(self, output: Any) -> list[torch.Tensor]:
        """Every FPN level: the 0.5x level's projection reads the residual too (and is resized with it)."""
        return list(output.fpn_hidden_states)

    def evaluate(self, student, teacher, images, annotations=None, overlays=None) -> dict:
        from .evaluate import evaluate_sam3

        return evaluate_sam3(student, teacher, images, self.preprocess, annotations, overlays=overlays)

    def set_attention_shape(self, attn: nn.Module, num_heads: int, head_dim: int) -> None:
        attn.num_attention_heads = num_heads  # head_dim and the attention scale stay as built

    def describe(self, model: nn.Module) -> Structure:
        vis = self.encoder(model)
        vit = vis.backbone
        cfg = vit.config
        size = self.input_shape(model)[1]
        side = size // cfg.patch_size
        emb = [("backbone.embeddings.patch_embeddings.projection.weight", 0), ("backbone.embeddings.position_embeddings", 2),
               ("backbone.layer_norm.weight", 0), ("backbone.layer_norm.bias", 0)]
        if vit.embeddings.patch_embeddings.projection.bias is not None:
            emb.append(("backbone.embeddings.patch_embeddings.projection.bias", 0))
        blocks = []
        for i, layer in enumerate(vit.layers):
            p = f"backbone.layers.{i}"
            a = f"{p}.attention"
            emb += [(f"{p}.layer_norm1.weight", 0), (f"{p}.layer_norm1.bias", 0), (f"{a}.q_proj.weight", 1),
                    (f"{a}.k_proj.weight", 1), (f"{a}.v_proj.weight", 1), (f"{a}.o_proj.weight", 0),
                    (f"{a}.o_proj.bias", 0), (f"{p}.layer_norm2.weight", 0), (f"{p}.layer_norm2.bias", 0),
                    (f"{p}.mlp.fc1.weight", 1), (f"{p}.mlp.fc2.weight", 0), (f"{p}.mlp.fc2.bias", 0)]
            attn = layer.attention
            window = layer.window_size
            seq_side, seqs = (window, math.ceil(side / window) ** 2) if window > 0 else (side, 1)
            blocks.append(BlockSpec(
                name=p,
                attn=AttentionSpec(module=a, qkv=(f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"), proj=f"{a}.o_proj",
                                   num_heads=attn.num_attention_heads, head_dim=attn.head_dim,
                                   seq_len=seq_side * seq_side, num_seqs=seqs, modes=("heads",)),
                mlp=MlpSpec(fc1=f"{p}.mlp.fc1", fc2=f"{p}.mlp.fc2", hidden=layer.mlp.fc1.out_features),
            ))
        for j, level in enumerate(vis.neck.fpn_layers):  # each level's first layer reads the residual
            first = next((k for k, m in enumerate(level.scale_layers) if hasattr(m, "weight")), None)
            if first is not None:  # a transposed convolution: its input channels are axis 0
                emb.append((f"neck.fpn_layers.{j}.scale_layers.{first}.weight", 0))
            else:
                emb.append((f"neck.fpn_layers.{j}.proj1.weight", 1))
        return Structure(embed_dim=vit.layer_norm.weight.shape[0], blocks=blocks,
                         embedding_root="backbone.embeddings.patch_embeddings.projection", embedding_params=emb)
