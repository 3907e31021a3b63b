"""Settings declared once: a pydantic field is the setting (name, type, default, bounds,
description), and a `Flag` in its annotation says how it shows on the command line. The flow's
parameters (the UI's form, the Python API) and `python -m flows.export`'s flags are both made
from these declarations (flows/params.py, flows/flags.py).

A source or a product with settings of its own declares them in an `Options` model beside its
registry line; only that source or product receives them. Importing this module imports
nothing heavy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.fields import FieldInfo


@dataclass(frozen=True)
class Flag:
    """How a setting shows on the command line: `Annotated[int, Flag("--ee-concurrency", "N",
    "requests in flight")]`. The default is added to the help from the field itself."""

    name: str
    metavar: str | None = None
    help: str | None = None  # short; None: the field's description
    type: Callable[[str], Any] | None = None  # parses the text; None: from the annotation
    group: str | None = None  # the --help section it is listed under
    exclusive: str | None = None  # flags with the same value cannot be given together


def flag_of(field: FieldInfo) -> Flag | None:
    """The field's Flag, or None when it has no command-line flag."""
    return next((m for m in field.metadata if isinstance(m, Flag)), None)


class Options(BaseModel):
    """A source's or product's own settings; `owner` names it (a registry name)."""

    model_config = ConfigDict(frozen=True)

    def contradiction(self, owner: str, source: str) -> str | None:
        """Why these settings cannot go with the run's imagery source `source`, naming the
        fix, or None. `owner` is the name of the source or product they belong to."""
        return None

    def where(self) -> str:
        """The catalog or endpoint these settings point the source at, as a fetch's
        configuration records it (`SensorConfig.catalog`); "" where there is none."""
        return ""


def options_for(options: type[Options], settings: BaseModel) -> Options:
    """The settings of `options` taken out of a model that holds them among others."""
    return options.model_validate(settings.model_dump(include=set(options.model_fields)))
