"""How messages name a setting to their reader: the command line's flag (`--end`), or the
form's section and field title (`window › Last day`) in the UI and the Python API. Both come
from the setting's one declaration (flows/params.py), which hands them to embedders/naming.py:
messages of every layer name settings from there. The command line says which naming it
wants (`named_as("flags")`)."""

from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from embedders.naming import NAMING as NAMING
from embedders.naming import Names
from embedders.naming import declare as declare
from embedders.naming import given as given
from embedders.naming import named_as as named_as
from embedders.naming import setting as setting
from tasks.options import flag_of


def names_of(models: Sequence[type[BaseModel]]) -> dict[str, Names]:
    """Each setting's flag and place in the form (`window › Last day`), by its name, from
    its declaration in one of `models` (the form's sections, in order; the first wins)."""
    names: dict[str, Names] = {}
    for model in models:
        for name, field in model.model_fields.items():
            flag = flag_of(field)
            where = f"{model.__name__.lower()} › {field.title or name}"
            names.setdefault(name, Names(flag.name if flag else None, where))
    return names


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
