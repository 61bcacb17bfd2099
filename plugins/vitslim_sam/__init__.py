"""vitslim plugin for Segment Anything (package ``segment-anything``): models ``sam-b``, ``sam-l``, ``sam-h``."""

from vitslim import hookimpl

from .family import SamFamily


@hookimpl
def vitslim_families():
    return [SamFamily()]


@hookimpl
def vitslim_testbeds():
    from .testbed import ShapesTestbed

    return [ShapesTestbed()]
