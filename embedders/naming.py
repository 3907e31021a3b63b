"""How a message names a setting to its reader: the command line's flag (`--end`), or the
form's section and field title (`window › Last day`) in the Prefect UI and the Python API.

Messages about settings are built in every layer (embedders, tasks, flows), so this lives at
the bottom; it holds no setting of its own. The names come from each setting's one
declaration: the module that declares the settings (flows/params.py) hands them here with
`declare`. The command line says which naming it wants (`named_as("flags")`); the form's is
the default. The choice is a context variable: it reaches the threads Prefect's task runner
starts (each runs in a copy of the caller's context), not Dask's worker processes, where
messages name the form's fields.
"""

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

# Who messages about settings speak to: the command line names its flags (it sets "flags"),
# the UI's form and the Python API the form's fields.
NAMING: ContextVar[Literal["form", "flags"]] = ContextVar("swath_naming", default="form")


@dataclass(frozen=True)
class Names:
    """A setting's two names: its flag (None: it has none) and its place in the form."""

    flag: str | None  # "--end"
    field: str  # "window › Last day"


_DECLARED: dict[str, Names] = {}


def declare(names: Mapping[str, Names]) -> None:
    """The settings' names, by their Python name (`end`), from their declarations."""
    _DECLARED.update(names)


@contextlib.contextmanager
def named_as(naming: Literal["form", "flags"]) -> Iterator[None]:
    """Messages about settings name them as `naming` says within this block."""
    token = NAMING.set(naming)
    try:
        yield
    finally:
        NAMING.reset(token)


def setting(name: str) -> str:
    """How a message names the setting `name` to its reader: its flag on the command line
    (`--end`), else its section and title in the form (`window › Last day`). Where no
    settings were declared (the library used without the flow) it is the Python name."""
    names = _DECLARED.get(name)
    if names is None:
        if not _DECLARED:
            return name
        raise KeyError(f"{name} is not a setting: not one of {', '.join(_DECLARED)}")
    if NAMING.get() == "flags" and names.flag is not None:
        return names.flag
    return names.field


def given(**values: object) -> str:
    """Settings given values, as their reader gives them: `--start 2024-01-01 --end
    2024-12-31` on the command line, `window › First day: 2024-01-01, window › Last day:
    2024-12-31` in the form."""
    named = [(setting(name), value) for name, value in values.items()]
    if all(n.startswith("--") for n, _ in named):
        return " ".join(f"{n} {v}" for n, v in named)
    return ", ".join(f"{n}: {v}" for n, v in named)
