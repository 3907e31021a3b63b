"""The interfaces users hold on to stay as they were before the redesign (issue 19): the
flow's parameters as the UI's form and the Python API see them, and the command line's
flags. Wording (titles, descriptions, help) may change; names, types, defaults, choices and
what is required may not. The snapshot was taken from the code before the redesign; settings
added since are listed in ADDED, each with its default and flag, and come on top of it. Issue
22 changed the snapshot on purpose in two places: batch_size's "auto" is a one-item enum, not
a const (the UI renders a const as "cannot be changed"), and the bbox's items carry their
degree limits."""

import json
from pathlib import Path
from typing import Any

from prefect.utilities.callables import parameter_schema

from flows.export import export
from flows.flags import parser

BEFORE = Path(__file__).parent.parent / "data" / "interface_before_issue_19.json"
WORDING = ("title", "description")
# Settings added since the snapshot: (settings model, field, its default, its flag). Each has
# a default, so that every call and command line of before means what it meant. Issue 22:
# --shards; issue 24: Sentinel-1's orbit pass (tasks/sources/registry.py RadarOptions).
ADDED = [("Output", "shards", "auto", "--shards"), ("Imagery", "orbit_pass", None, "--orbit-pass")]
# Models registered since the snapshot: new choices of --models (issue 24: DOFA on Sentinel-1,
# Tessera computed on the fly).
ADDED_MODELS = {
    "dofa_base_s1",
    "tessera_otf",
    "olmoearth_nano",
    "olmoearth_base",
    "olmoearth_nano_s2s1",
}


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


def _without_added(schema: dict[str, Any]) -> dict[str, Any]:
    """The flow's parameter schema less the settings of ADDED, each checked for its default."""
    for model, field, default, _ in ADDED:
        assert schema["definitions"][model]["properties"].pop(field)["default"] == default
        assert schema["properties"][model.lower()]["default"].pop(field) == default
    return schema


def test_interface__the_flows_parameters_are_those_of_before() -> None:
    schema = json.loads(json.dumps(parameter_schema(export).model_dump(mode="json"), default=str))
    models = schema["definitions"]["Inference"]["properties"]["models"]["items"]
    assert set(models["enum"]) >= ADDED_MODELS
    models["enum"] = [m for m in models["enum"] if m not in ADDED_MODELS]
    assert _without_wording(_without_added(schema)) == _before()["flow_parameters"]


def test_interface__the_command_lines_flags_are_those_of_before() -> None:
    before = {
        " ".join(f["options"]): {k: f[k] for k in ("nargs", "default", "choices", "required")}
        for f in _before()["flags"]
    }
    flags = _flags()
    for _, _, _, flag in ADDED:
        assert flags.pop(flag)["default"] is None  # not given: the setting's default
    assert flags == before
