"""The timm family: timm's plain Vision Transformers (ViT, DeiT, EVA, BEiT, relpos, samvit, hybrids,
NaFlexVit), whatever their attention kind; see docs/plugins.md's coverage table for what is refused and why."""

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
from vitslim.weights import load_into, read_state_dict

from .names import resolve


def _patch_embedding(model: nn.Module) -> tuple[str, tuple[int, ...]] | None:
    """Where the residual stream starts (``patch_embed``: a Conv2d ``proj``; ``embeds``: NaFlexVit's
    patch embedding, a Linear on flattened patches or a Conv2d) and its native token grid; None if neither."""
    from torch import nn

    if isinstance(getattr(getattr(model, "patch_embed", None), "proj", None), nn.Conv2d):
        grid = model.patch_embed.grid_size
        return ("patch_embed", tuple(grid)) if grid is not None else None
    if isinstance(getattr(getattr(model, "embeds", None), "proj", None), (nn.Linear, nn.Conv2d)):
        grid = getattr(model.embeds, "pos_embed_grid_size", None)
        return ("embeds", tuple(grid)) if grid is not None else None
    return None


def adopt(module: nn.Module | None) -> None:
    """:func:`.layers.adopt`, imported when first needed (it imports timm; plugin discovery should not)."""
    from .layers import adopt as adopt_layer

    adopt_layer(module)


def _affine_free(attn: nn.Module) -> bool:
    """Whether k is normalised without a weight to fold the head-dim scale into (then whole heads only)."""
    from torch import nn

    k_norm = getattr(attn, "k_norm", None)
    return k_norm is not None and not isinstance(k_norm, nn.Identity) and getattr(k_norm, "weight", None) is None


def _attention_types() -> tuple[type, ...]:
    from timm.layers import Attention, AttentionRope
    from timm.models.beit import Attention as BeitAttention
    from timm.models.eva import EvaAttention
    from timm.models.vision_transformer_relpos import RelPosAttention
    from timm.models.vision_transformer_sam import Attention as SamAttention

    from .layers import (
        BeitAttentionAnyWidth,
        EvaAttentionAnyWidth,
        RelPosAttentionAnyWidth,
    )

    return (Attention, AttentionRope, EvaAttention, EvaAttentionAnyWidth, BeitAttention, BeitAttentionAnyWidth,
            RelPosAttention, RelPosAttentionAnyWidth, SamAttention)

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


def _block_spec(p: str, blk: nn.Module, params: dict, tokens: int, grid: tuple[int, ...],
                modes: tuple[str, ...]) -> tuple[BlockSpec, list[tuple[str, int]]]:
    """Block ``p``'s attention and MLP, and its parameters coupled to the residual width."""
    attn, mlp = blk.attn, blk.mlp
    adopt(attn)
    coupled = [(f"{p}.{name}", 0) for name in (
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "ls1.gamma", "ls2.gamma", "gamma_1", "gamma_2",
        "attn.proj.weight", "attn.proj.bias", "mlp.fc2.weight", "mlp.fc2.bias")]
    inputs = ["qkv"] if attn.qkv is not None else ["q_proj", "k_proj", "v_proj"]
    coupled += [(f"{p}.attn.{name}.weight", 1) for name in inputs + ["gate"]]
    gated = hasattr(mlp, "fc1_g")  # SwiGLU: fc2(act(fc1_g(x)) * fc1_x(x))
    fc1 = f"{p}.mlp.fc1_x" if gated else f"{p}.mlp.fc1"
    coupled += [(f"{fc1}.weight", 1)] + ([(f"{p}.mlp.fc1_g.weight", 1)] if gated else [])
    width = [(f"{p}.attn.{n}", 0) for n in ("q_bias", "v_bias", "gate.weight", "gate.bias", "norm.weight", "norm.bias")]
    head_dim = [(f"{p}.attn.{n}", 0) for n in ("q_norm.weight", "q_norm.bias", "k_norm.weight", "k_norm.bias")]
    head_dim += [(f"{p}.attn.{n}", 1) for n in ("rel_pos_h", "rel_pos_w")]  # samvit: as SAM's
    heads = [(f"{p}.attn.{n}", axis) for n, axis in (
        ("relative_position_bias_table", 1),          # BEiT: (distances, heads)
        ("rel_pos.relative_position_bias_table", 1),  # RelPosBias
        ("rel_pos.mlp.fc2.weight", 0), ("rel_pos.mlp.fc2.bias", 0),  # RelPosMlp: one output per head
    )]
    kv_heads = getattr(attn, "num_kv_heads", attn.num_heads)  # AttentionRope: grouped-query attention
    window = getattr(blk, "window_size", 0)  # samvit's windowed blocks

    def present(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
        return [x for x in pairs if x[0] in params]

    spec = BlockSpec(
        name=p,
        attn=AttentionSpec(
            module=f"{p}.attn", proj=f"{p}.attn.proj",
            qkv=f"{p}.attn.qkv" if attn.qkv is not None else tuple(f"{p}.attn.{n}" for n in inputs),
            num_heads=attn.num_heads, head_dim=attn.proj.in_features // attn.num_heads,
            num_kv_heads=kv_heads if kv_heads != attn.num_heads else None,
            seq_len=window ** 2 if window else tokens,
            num_seqs=math.prod(-(-g // window) for g in grid) if window else 1,
            head_dim_params=present(head_dim), width_params=present(width), head_params=present(heads),
            modes=("heads",) if getattr(attn, "rope", None) is not None or _affine_free(attn) else modes,
        ),
        mlp=MlpSpec(fc1=fc1, fc2=f"{p}.mlp.fc2", hidden=mlp.fc2.in_features,
                    gate=f"{p}.mlp.fc1_g" if gated else None, fused_gate=_glu_in_one_layer(mlp),
                    hidden_params=present([(f"{p}.mlp.norm.{n}", 0) for n in ("weight", "bias")])),
    )
    return spec, coupled


def _readers_of_the_residual(model: nn.Module, params: dict) -> tuple[list[tuple[str, int]], list[MlpSpec]]:
    """What reads the final residual stream (norm, head, a samvit neck, an attention pool's k/v), and the
    pool's own MLP (timm's Mlp), pruned like a block's."""
    from torch import nn

    reads = [("norm.weight", 0), ("norm.bias", 0)]
    pool, neck = getattr(model, "attn_pool", None), getattr(model, "neck", None)
    head_mlps = []
    if pool is not None and type(pool.mlp).__name__ == "Mlp" and isinstance(pool.mlp.norm, nn.Identity):
        head_mlps.append(MlpSpec(fc1="attn_pool.mlp.fc1", fc2="attn_pool.mlp.fc2", hidden=pool.mlp.fc2.in_features))
    if isinstance(neck, nn.Sequential):  # samvit: a 1x1 conv reads the residual stream, the head its output
        reads.append(("neck.0.weight", 1))
    elif neck is not None:  # samvit without a neck: LayerNorm2d (or nothing), then the head
        reads += [("neck.weight", 0), ("neck.bias", 0), ("head.norm.weight", 0), ("head.norm.bias", 0),
                  ("head.pre_logits.fc.weight", 1)]
        if "head.pre_logits.fc.weight" not in params:  # else the classifier reads the hidden layer
            reads.append(("head.fc.weight", 1))
    elif pool is not None:  # SigLIP's / PE's latent attention pool reads the residual stream (kv) and
        adopt(pool)       # writes a stream of its own width, which fc_norm and the head read
        reads += [("attn_pool.kv.weight", 1), ("attn_pool.pos_embed", 1)]
    else:
        reads += [("fc_norm.weight", 0), ("fc_norm.bias", 0)]
        reads += [(f"{name}.weight", 1) for name, module in model.named_children()
                  if name.startswith("head") and isinstance(module, nn.Linear)]  # head, head_dist
    return reads, head_mlps


class TimmFamily(Family):
    """timm ViTs: ``VisionTransformer``, ``Eva``, ``Beit``, ``VisionTransformerRelPos``,
    ``VisionTransformerSAM`` and ``NaFlexVit`` with blocks whose attention and MLP kinds it knows."""

    name = "timm"

    def model_names(self) -> list[str]:
        return [PREFIX + "<model>", PREFIX + "<short name, e.g. vit_base, deit_small, dinov2_base>"]

    def handles(self, name: str) -> bool:
        return name.startswith(PREFIX)

    def check_name(self, name: str) -> None:
        resolve(name[len(PREFIX):])

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
        """Refuse, in one line, architectures whose blocks vitslim cannot prune."""
        from timm.layers import AttentionPoolLatent, GluMlp, Mlp, SwiGLU
        from torch import nn

        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
            raise UsageError(f"timm:{arch} is not a supported Vision Transformer: it has no `blocks`")
        if _patch_embedding(model) is None:
            raise UsageError(f"timm:{arch} is not supported: it has no patch embedding vitslim knows "
                             f"(a Conv2d patch_embed.proj, or NaFlexVit's embeds.proj, with a fixed input size)")
        ropes = [getattr(model, "rope", None)] + [getattr(getattr(b, "attn", None), "rope", None) for b in blocks]
        if any(sum(p.numel() for p in rope.parameters()) > 0 for rope in ropes if rope is not None):
            raise UsageError(f"timm:{arch} is not supported: its rotary position embedding learns per-head "
                             f"frequencies (rope_type='mixed'), which head pruning would have to slice per block")
        for i, blk in enumerate(blocks):
            attn, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
            if attn is None and (hasattr(blk, "attns") or hasattr(blk, "in_proj")):
                raise UsageError(f"timm:{arch} is not supported: block {i} runs attention and MLP as parallel "
                                 f"branches ({type(blk).__name__}), which vitslim does not describe yet")
            if type(attn) not in _attention_types():
                raise UsageError(
                    f"timm:{arch} is not supported: block {i} has no attention vitslim knows (timm's Attention, "
                    f"AttentionRope, EVA's, BEiT's, RelPosAttention or samvit's), found {_qualname(attn)}"
                )
            if type(mlp) not in (Mlp, SwiGLU, GluMlp):
                raise UsageError(
                    f"timm:{arch} is not supported: block {i} has no timm Mlp, SwiGLU or GluMlp "
                    f"(mlp.fc1/mlp.fc2), found {_qualname(mlp)}"
                )
        pool = getattr(model, "attn_pool", None)
        if pool is not None and not isinstance(pool, AttentionPoolLatent):
            raise UsageError(f"timm:{arch} is not supported: its pooling head is a {_qualname(pool)}, "
                             f"not the latent attention pool (AttentionPoolLatent)")

    def identify(self, model: nn.Module):
        from timm.models.beit import Beit
        from timm.models.eva import Eva
        from timm.models.naflexvit import NaFlexVit
        from timm.models.vision_transformer import VisionTransformer
        from timm.models.vision_transformer_relpos import VisionTransformerRelPos
        from timm.models.vision_transformer_sam import VisionTransformerSAM

        if not isinstance(model, (VisionTransformer, Eva, Beit, VisionTransformerRelPos, VisionTransformerSAM,
                                  NaFlexVit)):
            return None
        return PREFIX + model.pretrained_cfg["architecture"], {}

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        from torch import nn

        root, grid = _patch_embedding(model)
        if root == "patch_embed":  # a hybrid's proj reads its CNN backbone's features, not the image
            backbone = getattr(model.patch_embed, "backbone", None)
            chans = model.patch_embed.proj.in_channels if backbone is None else next(
                m.in_channels for m in backbone.modules() if isinstance(m, nn.Conv2d))
            return (chans, *model.patch_embed.img_size)
        return (model.in_chans, *(g * p for g, p in zip(grid, model.embeds.patch_size)))

    def input_size_config(self, size: int) -> dict[str, Any]:
        return {"img_size": size}

    def preprocess(self, model: nn.Module, image: Any) -> torch.Tensor:
        """The model's own eval transform (timm's data config: size, crop, mean, std)."""
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config({"input_size": self.input_shape(model)}, model=model)
        return create_transform(**cfg)(image)

    def optimize(self, model: nn.Module, kernel: str = "auto") -> nn.Module:
        """timm's attention is already one fused SDPA call (scale folded into k by pruning): make sure
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
        from timm.models.vision_transformer import VisionTransformer

        from vitslim.info import get_info

        if not isinstance(model, VisionTransformer) or model.attn_pool is not None:
            what = type(model).__name__ if not isinstance(model, VisionTransformer) else "a model with an attention-pooling head"
            raise UsageError(f"only timm VisionTransformer models without an attention-pooling head (whose width "
                             f"timm would rebuild from the pruned embedding) can be written in timm's Hugging Face "
                             f"layout, not {what}: keep the vitslim file (vitslim.load reads it)")

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
        import torch

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
        """The structure of ``model``. Layers that assume equal widths are switched in place to their
        any-width stand-ins (:mod:`.layers`: same parameters, same outputs)."""
        self._check(model, (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__))
        params = dict(model.named_parameters())
        root, grid = _patch_embedding(model)
        adopt(getattr(model, "embeds", None))
        coupled = [(f"{root}.proj.weight", 0), (f"{root}.proj.bias", 0)]
        coupled += [(name, params[name].dim() - 1) for name in params  # tokens, position embeddings
                    if "." not in name.removeprefix(f"{root}.") and name.endswith(("token", "pos_embed", "pos_embed_y", "pos_embed_x"))]
        coupled += [(f"{root}.norm.{n}", 0) for n in ("weight", "bias")] + [(f"norm_pre.{n}", 0) for n in ("weight", "bias")]
        tokens = math.prod(grid) + getattr(model, "num_prefix_tokens", 0)
        # a table every block shares fixes what may be removed: RoPE (EVA02, the *_rope_* ViTs, DINOv3, PE)
        # pairs head-dim channels, so only whole heads go; a shared relative position bias has every head
        if getattr(model, "rope", None) is not None:
            modes = ("heads",)
        elif getattr(model, "shared_rel_pos", None) is not None or getattr(model, "rel_pos_bias", None) is not None:
            modes = ("head_dim",)
        else:
            modes = ("head_dim", "heads")
        blocks = []
        for i, blk in enumerate(model.blocks):
            spec, block_coupled = _block_spec(f"blocks.{i}", blk, params, tokens, grid, modes)
            blocks.append(spec)
            coupled += block_coupled
        reads, head_mlps = _readers_of_the_residual(model, params)
        return Structure(
            embed_dim=params[f"{root}.proj.weight"].shape[0], blocks=blocks, embedding_root=f"{root}.proj",
            embedding_params=[(name, axis) for name, axis in coupled + reads if name in params], head_mlps=head_mlps,
        )

    def set_embed_dim(self, encoder: nn.Module, width: int) -> None:
        """Set the width attributes that named the residual width (a pooling head or a neck keeps its own)."""
        from torch import nn

        old = encoder.embed_dim
        separate_head = getattr(encoder, "attn_pool", None) is not None or isinstance(getattr(encoder, "neck", None), nn.Sequential)
        for attr in ("embed_dim", "num_features", "head_hidden_size"):
            if getattr(encoder, attr, None) == old and not (separate_head and attr != "embed_dim"):
                setattr(encoder, attr, width)

    def set_attention_shape(self, attn: nn.Module, num_heads: int, head_dim: int) -> None:
        import torch

        adopt(attn)
        attn.num_heads = num_heads
        attn.head_dim = head_dim
        attn.attn_dim = num_heads * head_dim
        attn.scale = head_dim ** -0.5
        if hasattr(attn, "num_kv_heads"):  # AttentionRope, maybe with grouped-query attention (k, v resized first)
            kv = attn.k_proj.weight.shape[0] // head_dim if attn.qkv is None else num_heads
            attn.num_kv_heads, attn.kv_dim, attn.num_kv_groups = kv, kv * head_dim, num_heads // kv
        if getattr(attn, "k_bias", None) is not None:  # EVA, BEiT: a zero buffer beside q_bias, v_bias
            attn.k_bias = torch.zeros_like(attn.q_bias)
        rel_pos = getattr(attn, "rel_pos", None)
        if rel_pos is not None:  # RelPosMlp / RelPosBias: one bias map per head
            rel_pos.num_heads = num_heads
            rel_pos.bias_shape = (*rel_pos.bias_shape[:-1], num_heads)

    def on_head_dim_pruned(self, attn: nn.Module, old_head_dim: int) -> None:
        """timm's fused paths scale by the *current* head dim; fold the ratio into k (q may also feed a
        relative position bias, as in samvit) so that the pruned attention equals the original one with
        the removed channels zeroed (where nothing normalises over head dims: a q/k norm or a scale norm
        re-normalises over the kept channels)."""
        import torch
        from torch import nn

        factor = (attn.head_dim / old_head_dim) ** 0.5
        rows = attn.num_heads * attn.head_dim
        k_norm = getattr(attn, "k_norm", nn.Identity())  # BEiT's attention has none
        with torch.no_grad():
            if getattr(k_norm, "weight", None) is not None:
                targets = [k_norm.weight, getattr(k_norm, "bias", None)]
            elif not isinstance(k_norm, nn.Identity):
                raise UsageError("cannot prune head dims of a timm attention with an affine-free k_norm")
            elif attn.qkv is not None:  # EVA's and BEiT's k has no bias
                targets = [attn.qkv.weight[rows:2 * rows],
                           None if attn.qkv.bias is None else attn.qkv.bias[rows:2 * rows]]
            else:
                targets = [attn.k_proj.weight, attn.k_proj.bias]
            for t in targets:
                if t is not None:
                    t *= factor
