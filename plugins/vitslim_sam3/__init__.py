"""vitslim plugin for SAM 3 (Segment Anything 3, transformers' ``Sam3Model``): model ``sam3``, whose
vision encoder (Perception-Encoder ViT + FPN neck) is compressed.

transformers is imported only when a SAM 3 model is built, so the other families work without it."""

from vitslim import hookimpl

from .family import Sam3Family


@hookimpl
def vitslim_families():
    return [Sam3Family()]
