"""Plugin discovery (pluggy, ``vitslim`` entry points) and lookups of families and criteria."""

from __future__ import annotations

from typing import TYPE_CHECKING

import functools

import pluggy
if TYPE_CHECKING:  # torch is imported where it is used: listing plugins and the CLI's help stay fast
    from torch import nn

from . import hookspecs
from .errors import UsageError
from .family import Family


@functools.lru_cache(maxsize=1)
def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, with every installed ``vitslim`` entry point loaded."""
    pm = pluggy.PluginManager("vitslim")
    pm.add_hookspecs(hookspecs)
    from .criteria import builtin

    pm.register(builtin, name="vitslim.criteria")
    pm.load_setuptools_entrypoints("vitslim")
    return pm


@functools.lru_cache(maxsize=1)
def _families() -> tuple[Family, ...]:
    return tuple(f for result in plugin_manager().hook.vitslim_families() for f in result)


def families() -> list[Family]:
    """Every family provided by an installed plugin (asked once per process)."""
    return list(_families())


def importances() -> dict[str, object]:
    """Every named importance criterion (built-in and from plugins)."""
    found: dict[str, object] = {}
    for result in reversed(plugin_manager().hook.vitslim_importances()):
        found.update(result)
    return found


def plugins() -> list[dict]:
    """What each loaded plugin provides, for ``vitslim plugins``."""
    pm = plugin_manager()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    rows = []
    for name, plugin in pm.list_name_plugin():
        fams = _call(plugin, "vitslim_families") or []
        crits = _call(plugin, "vitslim_importances") or {}
        beds = _call(plugin, "vitslim_testbeds") or []
        dist = dists.get(id(plugin))
        rows.append({
            "plugin": name,
            "package": f"{dist.project_name} {dist.version}" if dist else "vitslim (built in)",
            "families": {f.name: f.model_names() for f in fams},
            "importances": sorted(crits),
            "testbeds": sorted(t.name for t in beds),
        })
    return rows


def _call(plugin, hook: str):
    fn = getattr(plugin, hook, None)
    return fn() if callable(fn) else None


def family_for_name(name: str) -> Family:
    """The family that understands ``name``, or a :class:`UsageError` listing the known names."""
    for family in families():
        if family.handles(name):
            return family
    known = ", ".join(n for f in families() for n in f.model_names())
    raise UsageError(f"unknown model '{name}': known models are {known} (see `vitslim plugins`)")


def family_of(model: nn.Module) -> Family:
    """The family a model instance belongs to."""
    from .info import get_info, set_info

    info = get_info(model)
    if info is not None:
        for family in families():
            if family.name == info["family"]:
                return family
    for family in families():
        found = family.identify(model)
        if found is not None:
            set_info(model, family.name, found[0], found[1])
            return family
    raise UsageError(f"no installed family knows models of type {type(model).__name__}")
