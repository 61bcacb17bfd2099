"""vitslim plugin for timm Vision Transformers: models ``timm:<name>``."""

from vitslim import hookimpl

from .family import TimmFamily


@hookimpl
def vitslim_families():
    return [TimmFamily()]


@hookimpl
def vitslim_testbeds():
    from .digits import DigitsTestbed, ManyHeadDigitsTestbed

    return [DigitsTestbed(), ManyHeadDigitsTestbed()]
