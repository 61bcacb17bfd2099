"""The timm family: any timm Vision Transformer built from ``vision_transformer`` blocks."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vitslim import Family
from vitslim.errors import UsageError, WeightsError
from vitslim.info import set_info
from vitslim.structure import AttentionSpec, BlockSpec, MlpSpec, Structure
from vitslim.weights import load_into, read_state_dict

from .names import resolve

PREFIX = "timm:"


def _glu_in_one_layer(mlp: nn.Module) -> bool:
    """timm's GluMlp: one fc1 whose output halves are value and gate (split on the last axis)."""
    from timm.layers import GluMlp

    if isinstance(mlp, GluMlp) and getattr(mlp, "chunk_dim", -1) != -1:
        raise UsageError("a GluMlp that splits its features on another axis than the last is not supported")
    return isinstance(mlp, GluMlp)


def _qualname(module: object) -> str:
    """``eva.EvaAttention``: a class name with its timm module, since several are called Attention."""
    return f"{type(module).__module__.rpartition('.')[2]}.{type(module).__name__}" if module is not None else "none"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (one TCP connection, a few seconds at most)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_offline() -> None:
    """Put huggingface_hub in offline mode for this process (it reads the setting at import)."""
    import os

    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass


class TimmFamily(Family):
    """timm ViTs (``VisionTransformer`` and friends with ``Attention`` + ``Mlp`` blocks)."""

    name = "timm"

    def model_names(self) -> list[str]:
        return [PREFIX + "<model>", PREFIX + "<short name, e.g. vit_base, deit_small, dinov2_base>"]

    def handles(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def create(self, name: str, pretrained: bool = True, checkpoint: str | None = None, **config: Any):
        import timm

        arch = resolve(name[len(PREFIX):])  # short names: vit_base -> vit_base_patch16_224
        use_hub = pretrained and checkpoint is None
        if use_hub and not _hub_reachable():
            _hub_offline()  # weights already in the Hugging Face cache still load; nothing retries for minutes
        try:
            model = timm.create_model(arch, pretrained=use_hub, **config)
        except TypeError as exc:
            raise UsageError(f"bad arguments for timm model '{arch}': {exc}") from None
        except Exception as exc:  # noqa: BLE001 - hub failures come in many types
            if not use_hub:
                raise
            raise WeightsError(
                f"cannot fetch pretrained weights for timm:{arch} ({type(exc).__name__}): are you offline? "
                f"Pass --checkpoint PATH or --random-weights (Python: checkpoint=PATH or pretrained=False)"
            ) from None
        self._check(model, arch)
        if checkpoint is not None:
            load_into(model, read_state_dict(checkpoint), str(checkpoint))
        set_info(model, self.name, PREFIX + arch, config)
        return model.eval()

    @staticmethod
    def _check(model: nn.Module, arch: str) -> None:
        """Refuse, in one line, architectures whose blocks are not the standard ViT block."""
        from timm.layers import Attention, GluMlp, Mlp, SwiGLU

        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
            raise UsageError(f"timm:{arch} is not a supported Vision Transformer: it has no `blocks`")
        if not isinstance(getattr(getattr(model, "patch_embed", None), "proj", None), nn.Conv2d):
            raise UsageError(f"timm:{arch} is not supported: it has no convolutional patch embedding "
                             f"(patch_embed.proj)")
        for i, blk in enumerate(blocks):
            attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
            if type(attn) is not Attention:
                raise UsageError(
                    f"timm:{arch} is not supported: block {i} has no plain timm Attention "
                    f"(attn.qkv/attn.proj), found {_qualname(attn)}"
                )
            if getattr(attn, "gate", None) is not None:
                raise UsageError(f"timm:{arch} is not supported: block {i} gates its attention output")
            if not isinstance(getattr(attn, "norm", nn.Identity()), nn.Identity):
                raise UsageError(f"timm:{arch} is not supported: block {i} normalises the attention output "
                                 f"(scale_norm), which head pruning cannot keep exact")
            if type(mlp) not in (Mlp, SwiGLU, GluMlp) or not isinstance(mlp.norm, nn.Identity):
                raise UsageError(
                    f"timm:{arch} is not supported: block {i} has no plain timm Mlp (mlp.fc1/mlp.fc2), "
                    f"found {_qualname(mlp)}"
                )
        if getattr(model, "attn_pool", None) is not None:
            raise UsageError(f"timm:{arch} is not supported: attention-pooling heads are not handled yet")

    def identify(self, model: nn.Module):
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            return None
        return PREFIX + model.pretrained_cfg["architecture"], {}

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        chans = model.patch_embed.proj.in_channels
        return (chans, *model.patch_embed.img_size)

    def input_size_config(self, size: int) -> dict[str, Any]:
        return {"img_size": size}

    def preprocess(self, model: nn.Module, image: Any) -> torch.Tensor:
        """The model's own eval transform (timm's data config: size, crop, mean, std)."""
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({"input_size": self.input_shape(model)}, model=model)
        return create_transform(**cfg)(image)

    def optimize(self, model: nn.Module, kernel: str = "auto") -> nn.Module:
        """timm's attention is already one fused SDPA call (scale folded into q by pruning): make sure
        the fused path is on."""
        if kernel not in ("auto", "sdpa"):
            raise UsageError(f"unknown attention kernel '{kernel}' for timm: choose auto or sdpa")
        for blk in model.blocks:
            blk.attn.fused_attn = True
        return model

    def export_hf(self, model: nn.Module, folder) -> None:
        """timm's own Hugging Face layout (``config.json`` with the architecture and its arguments, and
        ``model.safetensors``), which ``timm.create_model("local-dir:FOLDER", pretrained=True)`` or an upload
        to the hub loads; only for uniform widths whose attention width equals the embedding width (timm's
        VisionTransformer has one width for both)."""
        from timm.models._hub import save_for_hf

        from vitslim.info import get_info

        widths = self.describe(model).widths()
        embed, blocks = widths["embed_dim"], widths["blocks"]
        heads, mlp = {b["num_heads"] for b in blocks}, {b["mlp_hidden"] for b in blocks}
        if any(b["num_heads"] * b["head_dim"] != embed for b in blocks) or len(heads) != 1 or len(mlp) != 1:
            raise UsageError(
                "this model cannot be written as a timm VisionTransformer config: it has one width for the "
                f"embedding and attention and one MLP width (here embedding {embed}, attention "
                f"{sorted({b['num_heads'] * b['head_dim'] for b in blocks})}, MLP {sorted(mlp)}); compress "
                "with --ranking uniform to a ratio where both widths agree (0.5 does), or keep the vitslim file")
        config = {k: v for k, v in (get_info(model) or {}).get("config", {}).items() if k != "pretrained_cfg_overlay"}
        args = {**config, "embed_dim": embed, "num_heads": heads.pop(), "mlp_ratio": (mlp.pop() + 0.5) / embed}
        save_for_hf(model, str(folder), model_args=args, safe_serialization=True)

    def evaluate(self, student, teacher, images, annotations=None) -> dict:
        """Top-1 agreement with the teacher and cosine similarity of the outputs (logits, or features
        for a headless model)."""
        xs = torch.stack([self.preprocess(teacher, im.convert("RGB")) for im in images])
        dev = next(student.parameters()).device
        with torch.no_grad():
            s, t = student.eval()(xs.to(dev)).float(), teacher.eval()(xs.to(dev)).float()
        return {
            "images": len(images),
            "top1_agreement": float((s.argmax(-1) == t.argmax(-1)).float().mean()),
            "output_cosine": float(torch.nn.functional.cosine_similarity(s, t, dim=-1).mean()),
        }

    def describe(self, model: nn.Module) -> Structure:
        params = dict(model.named_parameters())
        emb: list[tuple[str, int]] = []

        def add(name: str, axis: int) -> None:
            if name in params:
                emb.append((name, axis))

        for name in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            add(name, 0)
        for name in [n for n in params if "." not in n and (n.endswith("token") or n == "pos_embed")]:
            add(name, params[name].dim() - 1)  # cls, register, distillation tokens; position embedding
        for name in ("patch_embed.norm.weight", "patch_embed.norm.bias", "norm_pre.weight", "norm_pre.bias"):
            add(name, 0)
        grid = model.patch_embed.grid_size
        tokens = math.prod(grid) + getattr(model, "num_prefix_tokens", 0)
        blocks = []
        for i, blk in enumerate(model.blocks):
            p = f"blocks.{i}"
            for name in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias",
                         "ls1.gamma", "ls2.gamma", "attn.proj.weight", "attn.proj.bias",
                         "mlp.fc2.weight", "mlp.fc2.bias"):
                add(f"{p}.{name}", 0)
            add(f"{p}.attn.qkv.weight", 1)
            gated = hasattr(blk.mlp, "fc1_g")  # SwiGLU: fc2(act(fc1_g(x)) * fc1_x(x))
            fc1 = f"{p}.mlp.fc1_x" if gated else f"{p}.mlp.fc1"
            add(f"{fc1}.weight", 1)
            if gated:
                add(f"{p}.mlp.fc1_g.weight", 1)
            attn = blk.attn
            hd_params = [(f"{p}.attn.{n}", 0) for n in ("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")
                         if f"{p}.attn.{n}" in params]
            blocks.append(BlockSpec(
                name=p,
                attn=AttentionSpec(
                    module=f"{p}.attn", qkv=f"{p}.attn.qkv", proj=f"{p}.attn.proj",
                    num_heads=attn.num_heads, head_dim=attn.head_dim, head_dim_params=hd_params,
                    seq_len=tokens, num_seqs=1,
                ),
                mlp=MlpSpec(fc1=fc1, fc2=f"{p}.mlp.fc2", hidden=blk.mlp.fc2.in_features,
                            gate=f"{p}.mlp.fc1_g" if gated else None, fused_gate=_glu_in_one_layer(blk.mlp)),
            ))
        for name in ("norm.weight", "norm.bias", "fc_norm.weight", "fc_norm.bias"):
            add(name, 0)
        for name, module in model.named_children():
            if name.startswith("head") and isinstance(module, nn.Linear):  # head, head_dist
                add(f"{name}.weight", 1)
        return Structure(
            embed_dim=model.patch_embed.proj.out_channels,
            blocks=blocks, embedding_root="patch_embed.proj", embedding_params=emb,
        )

    def set_embed_dim(self, encoder: nn.Module, width: int) -> None:
        for attr in ("embed_dim", "num_features", "head_hidden_size"):
            if hasattr(encoder, attr):
                setattr(encoder, attr, width)

    def set_attention_shape(self, attn: nn.Module, num_heads: int, head_dim: int) -> None:
        attn.num_heads = num_heads
        attn.head_dim = head_dim
        attn.attn_dim = num_heads * head_dim
        attn.scale = head_dim ** -0.5

    def on_head_dim_pruned(self, attn: nn.Module, old_head_dim: int) -> None:
        """timm's fused path scales by the *current* head dim; fold the ratio into q so that the pruned
        attention equals the original one with the removed channels zeroed."""
        factor = (attn.head_dim / old_head_dim) ** 0.5
        with torch.no_grad():
            if isinstance(attn.q_norm, nn.Identity):
                rows = attn.attn_dim
                attn.qkv.weight[:rows] *= factor
                if attn.qkv.bias is not None:
                    attn.qkv.bias[:rows] *= factor
            elif getattr(attn.q_norm, "weight", None) is not None:
                attn.q_norm.weight *= factor
                if getattr(attn.q_norm, "bias", None) is not None:
                    attn.q_norm.bias *= factor
            else:
                raise UsageError("cannot prune head dims of a timm attention with an affine-free q_norm")
