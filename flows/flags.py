"""The command line's flags, and how they become the flow's parameters: parsing only, so that
`--help` and a bad argument answer before torch, Prefect or any model is imported."""

import argparse
import types
import typing
from datetime import date
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from flows.params import SETTINGS
from tasks.options import Flag, flag_of

DASK_WORKERS = 2  # workers of the local cluster that --runner dask starts by default


def declared() -> list[tuple[type[BaseModel], str, FieldInfo, Flag]]:
    """Every setting that has a flag: (its model, field name, field, flag), in the order
    the settings are declared."""
    found = []
    for model in SETTINGS:
        for name, field in model.model_fields.items():
            flag = flag_of(field)
            if flag is not None:
                found.append((model, name, field, flag))
    return found


def flag_names() -> dict[str, str]:
    """pydantic field -> command-line flag, for error messages."""
    return {name: flag.name for _, name, _, flag in declared()}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flows.export",
        description="Export foundation-model embeddings of every point of a region into one "
        "Zarr store. With no arguments: the offline demo over a real Sentinel-2 sample.",
        epilog="exit codes: 0 every point of every model ok; 1 some points have no data or "
        "failed (the summary says why; rerun to resume); 2 bad input, nothing written; "
        "130 stopped by Ctrl-C, 143 by SIGTERM (rerun the same command to resume)",
    )
    sections: dict[str | None, Any] = {None: p}
    exclusive: dict[str, Any] = {}
    for _, _, field, flag in declared():
        if flag.group not in sections:
            sections[flag.group] = p.add_argument_group(flag.group)
        where = sections[flag.group]
        if flag.exclusive:
            if flag.exclusive not in exclusive:
                exclusive[flag.exclusive] = where.add_mutually_exclusive_group()
            where = exclusive[flag.exclusive]
        where.add_argument(flag.name, **_argument(field, flag))
    p.add_argument(
        "--runner",
        choices=["threads", "dask"],
        default="threads",
        help="threads: tasks in this process; dask: on a local Dask cluster or the one at "
        "--dask-address (threads)",
    )
    p.add_argument("--dask-address", metavar="ADDR", help="existing Dask scheduler (tcp://...)")
    p.add_argument(
        "--dask-workers", type=int, metavar="N", help=f"local cluster size ({DASK_WORKERS})"
    )
    p.add_argument("--list-models", action="store_true", help="list the models and exit")
    p.add_argument("--verbose", action="store_true", help="show Prefect's logs of every task")
    p.add_argument(
        "--dry-run", action="store_true", help="say what the export would do; write nothing"
    )
    p.add_argument(
        "--verify",
        action="store_true",
        help="check that every chunk marked done in --out holds the data written with it, "
        "and exit (0 sound, 1 damaged: rerun the export, 2 not a swath store)",
    )
    return p


def _argument(field: FieldInfo, flag: Flag) -> dict[str, Any]:
    """argparse's arguments for one setting: its type and choices from the annotation, its
    help from the flag (or the description) with the field's default. Every flag defaults
    to None (False for a switch): a flag not given leaves the setting's own default."""
    help_text = flag.help or field.description or ""
    kind = _plain(field.annotation)
    if kind is bool:
        return {"action": "store_true", "help": help_text + _default(False, field.default)}
    args: dict[str, Any] = {"metavar": flag.metavar, "help": help_text}
    default = field.get_default(call_default_factory=True)
    if typing.get_origin(kind) is typing.Literal:
        args["choices"] = list(typing.get_args(kind))
        args.pop("metavar")
    elif flag.type is not None:
        args["type"] = flag.type
    elif kind is date:
        args["type"] = iso_date
    elif kind in (int, float):
        args["type"] = kind
    args["help"] += _default(None, default)
    return args


def _plain(annotation: Any) -> Any:
    """The annotation without None: `str | None` -> str."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _default(unset: Any, default: Any) -> str:
    """' (the default)' for --help, or '' where there is none to show."""
    if default is unset or default is None:
        return ""
    if isinstance(default, float):
        default = f"{default:g}"
    if isinstance(default, list | tuple):
        default = ",".join(str(v) for v in default)
    return f" ({default})"


def iso_date(text: str) -> date:
    """An argparse type: a YYYY-MM-DD date, or a clear error."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date YYYY-MM-DD") from None


def contradictions(a: argparse.Namespace) -> str | None:
    """Flags that cannot go together, in one line, or None."""
    if a.previous_month and (a.start or a.end):
        given = " and ".join(f for f, v in (("--start", a.start), ("--end", a.end)) if v)
        return (
            f"--previous-month picks its own window, and {given} another; give either "
            "--previous-month or --start/--end"
        )
    return None


def params(a: argparse.Namespace) -> dict[str, Any]:
    """The flow's parameters from the flags given; unset flags keep the defaults."""
    given: dict[type[BaseModel], dict[str, Any]] = {model: {} for model in SETTINGS}
    for model, name, _, flag in declared():
        value = getattr(a, flag.name.removeprefix("--").replace("-", "_"))
        if value is not None and value is not False:
            given[model][name] = value
    return {model.__name__.lower(): model(**values) for model, values in given.items()}


def validation_message(e: ValidationError) -> str:
    err = e.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else ""
    flag = flag_names().get(field, field)
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "literal_error" and field == "models":
        from embedders.registry import unknown_model
        from tasks.products.registry import PRODUCTS

        return unknown_model(str(err["input"]), PRODUCTS)
    if not flag:
        return msg
    return f"invalid {flag} {err.get('input')!s}: {msg}"


def glue_negative_values(argv: list[str]) -> list[str]:
    """`--bbox -67.66,-47.86,...`: argparse takes a value that starts with '-' and is not a
    plain number for an option, so such values are glued to their flag (`--bbox=-67.66,...`).
    A comma-separated list written with spaces after its commas (`--models a, b`) is one
    value again."""
    out: list[str] = []
    for token in argv:
        if out and out[-1] == "--bbox" and token.startswith("-"):
            out[-1] = f"--bbox={token}"
        elif _listing(out) and (out[-1].endswith(",") or token.startswith(",")):
            out[-1] += token  # `--models a, b`: a list the shell split at its spaces
        else:
            out.append(token)
    return out


def _listing(out: list[str]) -> bool:
    """Whether the last token is (the value of) a comma-separated list: --models or --bbox."""
    if len(out) >= 2 and out[-2] in ("--models", "--bbox"):
        return True
    return bool(out) and out[-1].startswith(("--models=", "--bbox="))
