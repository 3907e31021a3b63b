"""Plugins: imagery sources, models and products that another installed package adds.

A package declares them as entry points, one group per seam (`swath.sources`,
`swath.models`, `swath.products`), each naming the object the seam's registry takes:

    [project.entry-points."swath.models"]
    my_model = "my_package.my_model:ENTRY"

Each registry reads its group beside its own lines; a name declared twice is an error, as
is a plugin that does not load. Nothing here imports a plugin before it is asked for.
"""

from __future__ import annotations

from importlib.metadata import entry_points

GROUPS = ("swath.sources", "swath.models", "swath.products")


class PluginError(RuntimeError):
    """A plugin that does not load or clashes with a name already taken."""


def plugins(group: str) -> dict[str, object]:
    """Every entry point of `group`, by name, loaded."""
    if group not in GROUPS:
        raise ValueError(f"unknown plugin group {group!r}; groups: {', '.join(GROUPS)}")
    loaded: dict[str, object] = {}
    for point in entry_points(group=group):
        if point.name in loaded:
            raise PluginError(f"two {group} plugins are named {point.name!r}; uninstall one")
        try:
            loaded[point.name] = point.load()
        except Exception as e:  # any import failure of someone else's package
            raise PluginError(
                f"the {group} plugin {point.name!r} ({point.value}) does not load: {e}; "
                "fix or uninstall the package that declares it"
            ) from e
    return loaded


def merged(group: str, own: dict[str, object]) -> dict[str, object]:
    """`own` with the plugins of `group` added; a plugin may not take a name of `own`."""
    added = plugins(group)
    if taken := sorted(set(added) & set(own)):
        raise PluginError(
            f"{group} plugin(s) {', '.join(taken)} take names swath already has; rename them"
        )
    return {**own, **added}
