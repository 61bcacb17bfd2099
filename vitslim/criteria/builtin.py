"""The built-in criteria, registered through the same hook a plugin uses."""

from ..hookspecs import hookimpl
from .magnitude import MagnitudeImportance
from .random import RandomImportance
from .taylor import DisturbedTaylorImportance, TaylorImportance


@hookimpl
def vitslim_importances():
    return {
        "disturbed_taylor": DisturbedTaylorImportance,
        "taylor": TaylorImportance,
        "magnitude": MagnitudeImportance,
        "random": RandomImportance,
    }
