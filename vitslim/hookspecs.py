"""The plugin contract: hooks a ``vitslim`` entry point may implement.

A plugin is any module or object registered under the ``vitslim`` entry-point group, for example in
its ``pyproject.toml``::

    [project.entry-points.vitslim]
    myfamily = "my_package.vitslim_plugin"

and implementing one or more of the hooks below, marked with ``@vitslim.hookimpl``.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("vitslim")
hookimpl = pluggy.HookimplMarker("vitslim")


@hookspec
def vitslim_families() -> list:
    """Return the model families this plugin provides (instances of :class:`vitslim.Family`)."""


@hookspec
def vitslim_importances() -> dict:
    """Return importance criteria by name: ``{"name": criterion}``, where a criterion is a
    :class:`vitslim.criteria.Criterion` subclass (built with the options it accepts: ``sigma``,
    ``batches``, ``seed``, ...), an instance, or a plain function ``fn(group, ctx) -> scores``."""


@hookspec
def vitslim_testbeds() -> list:
    """Return quality testbeds (instances of :class:`vitslim.testbed.Testbed`): a trained teacher with
    the data and the metrics that measure whether a compressed student keeps what it knows."""
