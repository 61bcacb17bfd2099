"""The built-in criteria, registered through the same hook a plugin uses."""

from ..hookspecs import hookimpl


@hookimpl
def vitslim_importances():
    return {}
