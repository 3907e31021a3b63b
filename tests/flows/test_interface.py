"""The interfaces users hold on to stay as they were before the redesign (issue 19): the
flow's parameters as the UI's form and the Python API see them, and the command line's
flags. Wording (titles, descriptions, help) may change; names, types, defaults, choices and
what is required may not. The snapshot was taken from the code before the redesign; issue 22
changed it on purpose in two places: batch_size's "auto" is a one-item enum, not a const (the
UI renders a const as "cannot be changed"), and the bbox's items carry their degree limits."""

import json
from pathlib import Path
from typing import Any

from prefect.utilities.callables import parameter_schema

from flows.export import export
from flows.flags import parser

BEFORE = Path(__file__).parent.parent / "data" / "interface_before_issue_19.json"
WORDING = ("title", "description")


def _without_wording(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_wording(v) for k, v in node.items() if k not in WORDING}
    if isinstance(node, list):
        return [_without_wording(v) for v in node]
    return node


def _flags() -> dict[str, dict[str, Any]]:
    flags = {}
    for action in parser()._actions:
        default = action.default
        if not isinstance(default, str | int | float | bool | list | type(None)):
            default = repr(default)
        flags[" ".join(action.option_strings)] = {
            "nargs": action.nargs,
            "default": default,
            "choices": list(action.choices) if action.choices else None,
            "required": action.required,
        }
    return flags


def _before() -> dict[str, Any]:
    return json.loads(BEFORE.read_text())


def test_interface__the_flows_parameters_are_those_of_before() -> None:
    schema = json.loads(json.dumps(parameter_schema(export).model_dump(mode="json"), default=str))
    assert _without_wording(schema) == _before()["flow_parameters"]


def test_interface__the_command_lines_flags_are_those_of_before() -> None:
    before = {
        " ".join(f["options"]): {k: f[k] for k in ("nargs", "default", "choices", "required")}
        for f in _before()["flags"]
    }
    assert _flags() == before
