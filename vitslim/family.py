"""The interface a model family implements: names -> models, models -> structure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    import torch
    from torch import nn

from .structure import Structure


class Family:
    """Adapts one model family (SAM, timm ViTs, ...) to the family-agnostic core.

    Subclasses set ``name`` and implement the methods below; everything else in vitslim works from
    the :class:`~vitslim.structure.Structure` that :meth:`describe` returns.
    """

    name: str = ""
    #: how distillation weighs the MSEs of tensors on different scales when ``loss_scale`` is auto:
    #: ``raw`` (as they are) or ``teacher`` (each divided by the reference tensor's mean square; the
    #: disturbed-Taylor criterion then scales its noise and loss by each output tensor's too)
    loss_scale: str = "raw"

    def model_names(self) -> list[str]:
        """Names this family understands, for listings (patterns such as ``timm:<model>`` allowed)."""
        raise NotImplementedError

    def handles(self, name: str) -> bool:
        """Whether ``name`` (as typed by a user) belongs to this family."""
        raise NotImplementedError

    def check_name(self, name: str) -> None:
        """Refuse, in one line (:class:`UsageError`), a name this family handles but cannot build (an
        unknown architecture), before any work; the default accepts every name :meth:`handles`."""

    def create(
        self, name: str, pretrained: bool = True, checkpoint: str | None = None, **config: Any
    ) -> nn.Module:
        """Build the model ``name``; with ``pretrained`` load its official weights, or ``checkpoint``.

        ``config`` overrides architecture arguments (small test models, other sizes); the result must
        carry provenance (:func:`vitslim.info.set_info`) with the name and config that rebuild it.
        """
        raise NotImplementedError

    def open_folder(self, folder: Any) -> nn.Module | None:
        """The model in a folder of another library's layout (a Hugging Face ``config.json`` folder, say)
        if this family reads it, else None."""
        return None

    def identify(self, model: nn.Module) -> tuple[str, dict] | None:
        """(name, config) that rebuild the base architecture of ``model``, or None if not ours."""
        raise NotImplementedError

    def encoder(self, model: nn.Module) -> nn.Module:
        """The part of ``model`` that gets compressed (the whole model by default)."""
        return model

    def describe(self, model: nn.Module) -> Structure:
        """Describe the encoder of ``model``; names are relative to :meth:`encoder`."""
        raise NotImplementedError

    def input_shape(self, model: nn.Module) -> tuple[int, int, int]:
        """(channels, height, width) of one input image of the encoder."""
        raise NotImplementedError

    def input_size_config(self, size: int) -> dict[str, Any]:
        """Architecture arguments that make :meth:`create` build the model for ``size`` x ``size`` inputs
        (``--img-size``); families whose input size is fixed refuse."""
        from .errors import UsageError

        raise UsageError(f"{self.name} models take no input size override")

    def preprocess(self, model: nn.Module, image: Any) -> torch.Tensor:
        """Turn one RGB PIL image into the encoder's input tensor (C, H, W)."""
        raise NotImplementedError

    def evaluate(self, student: nn.Module, teacher: nn.Module, images: list, annotations: list | None = None,
                 overlays: Any = None) -> dict:
        """Label-free agreement of ``student`` with ``teacher`` on RGB PIL ``images`` (a dict of metrics).

        ``annotations`` holds, per image, the path of a ground-truth file beside it, or None. ``overlays``
        (optional): a folder for pictures of both models' outputs, one per image, where the family can
        draw them.
        """
        raise NotImplementedError

    def export_hf(self, model: nn.Module, folder: Any) -> None:
        """Write ``model`` into the (new, empty) ``folder`` as a Hugging Face model folder; families that
        have no such layout refuse."""
        from .errors import UsageError

        raise UsageError(f"the {self.name} family has no Hugging Face export: keep the vitslim file")

    def optimize(self, model: nn.Module, kernel: str = "auto") -> nn.Module:
        """Swap in faster, numerically equivalent layers (in place); the default changes nothing.
        ``kernel`` names one of the family's fused attention implementations; ``auto`` picks per device."""
        return model

    def set_attention_shape(self, attn: nn.Module, num_heads: int, head_dim: int) -> None:
        """Update an attention module's attributes after its qkv/proj layers changed width."""
        attn.num_heads = num_heads

    def set_embed_dim(self, encoder: nn.Module, width: int) -> None:
        """Update encoder attributes that record the residual width (after its parameters changed)."""

    def set_residual_widths(self, encoder: nn.Module, widths: list[int]) -> None:
        """Update encoder attributes that record the residual streams' widths (one per stream, see
        :meth:`Structure.streams`); a family with one stream implements :meth:`set_embed_dim` instead."""
        self.set_embed_dim(encoder, widths[0])

    def output_features(self, output: Any) -> list[torch.Tensor]:
        """The tensors of the encoder's output that distillation aligns and label-free criteria perturb:
        the output itself by default; a family whose encoder returns several maps (a dict, a pyramid)
        names those the rest of its model reads."""
        return [output]

    def graph_outputs(self, output: Any) -> list[torch.Tensor]:
        """The tensors torch-pruning's dependency graph is traced to (default: :meth:`output_features`);
        a family whose encoder computes an output the rest of its model does not read, but whose layers
        still read the residual, names it here too, so the graph finds those layers."""
        return self.output_features(output)

    def on_head_dim_pruned(self, attn: nn.Module, old_head_dim: int) -> None:
        """Called after pruning changed ``attn``'s head dim, so that it computes what the original model
        computes with the removed channels zeroed (keep the original attention scale)."""

    def extra_cost(self, model: nn.Module) -> tuple[int, int]:
        """(params, MACs) of the parts of ``model`` outside the encoder, for whole-model totals."""
        encoder = self.encoder(model)
        if encoder is model:
            return 0, 0
        enc = {id(p) for p in encoder.parameters()}
        return sum(p.numel() for p in model.parameters() if id(p) not in enc), 0

    def example_input(self, model: nn.Module, batch: int = 1, device: Any = None) -> torch.Tensor:
        """A random input batch for the encoder (used for tracing and counting)."""
        import torch

        return torch.randn(batch, *self.input_shape(model), device=device)
