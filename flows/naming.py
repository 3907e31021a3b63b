"""How messages name a setting to their reader: the command line's flag (`--end`), or the
form's section and field title (`window › Last day`) in the UI and the Python API. Both come
from the setting's one declaration (flows/params.py); the command line says which it wants
(`named_as("flags")`)."""

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Literal

from pydantic import BaseModel, ValidationError

from tasks.options import flag_of

# Who messages about settings speak to: the command line names its flags (it sets "flags"),
# the UI's form and the Python API the form's fields.
NAMING: ContextVar[Literal["form", "flags"]] = ContextVar("swath_naming", default="form")


@contextlib.contextmanager
def named_as(naming: Literal["form", "flags"]) -> Iterator[None]:
    """Messages about settings name them as `naming` says within this block."""
    token = NAMING.set(naming)
    try:
        yield
    finally:
        NAMING.reset(token)


def setting(name: str) -> str:
    """How a message names the setting `name` (a field of one of SETTINGS) to its reader:
    its flag on the command line (`--end`), else its section and title in the form
    (`window › Last day`). Both come from the setting's one declaration."""
    from flows.params import SETTINGS  # the settings name themselves in their messages

    for model in SETTINGS:
        field = model.model_fields.get(name)
        if field is None:
            continue
        flag = flag_of(field)
        if NAMING.get() == "flags" and flag is not None:
            return flag.name
        return f"{model.__name__.lower()} › {field.title or name}"
    raise KeyError(f"{name} is not a setting of {', '.join(m.__name__ for m in SETTINGS)}")


def form_errors(section: str, model: type[BaseModel], error: ValidationError) -> list[str]:
    """A form section's validation errors, one line each, its fields named as the form shows
    them (`region › Grid spacing (m): ...`); a rule across its fields names the section."""
    lines = []
    for err in error.errors():
        msg = str(err["msg"]).removeprefix("Value error, ")
        name = str(err["loc"][0]) if err["loc"] else ""
        field = model.model_fields.get(name) if name else None
        where = f"{section} › {field.title or name}" if field is not None else section
        lines.append(f"{where}: {msg}")
    return lines
