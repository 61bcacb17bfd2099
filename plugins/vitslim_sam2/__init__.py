"""vitslim plugin for SAM 2 (package ``sam2``, the optional extra ``vitslim[sam2]``): models ``sam2-t``,
``sam2-s``, ``sam2-b+``, ``sam2-l`` (SAM 2.1), whose Hiera image encoder is compressed.

``sam2`` is imported only when a SAM 2 model is built, so the other families work without it."""

from vitslim import hookimpl

from .family import Sam2Family


@hookimpl
def vitslim_families():
    return [Sam2Family()]


@hookimpl
def vitslim_testbeds():
    from .testbed import ShapesSam2Testbed

    return [ShapesSam2Testbed()]
