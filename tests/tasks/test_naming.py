"""Issue 22: messages of tasks/ and embedders/ that name a setting say the flag on the command
line and the form's field (section › title) in the UI and the Python API, from one naming
function (embedders/naming.py); none hard-codes a flag."""

import ast
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest
import requests

from embedders.naming import named_as
from embedders.steps import TimeSteps
from tasks.plan.points import plan_points
from tasks.plan.regions import axis_order_hint, bbox_region
from tasks.sources.earthengine import auth_fix
from tasks.sources.earthengine_auth import no_credentials
from tasks.sources.registry import SensorConfig, StacApiOptions, StacCatalogOptions
from tasks.sources.stac_api import api_error, resolve_api
from tasks.store import soundness

ROOT = Path(__file__).resolve().parents[2]
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def _raised(call: Callable[[], object]) -> str:
    with pytest.raises(Exception) as e:
        call()
    return str(e.value)


def _stac_api(url: str, sensor: str = "sentinel-2-l2a", **options: object) -> SensorConfig:
    return SensorConfig(
        sensor, url, "a-collection", 10.0, 8, "2021-01-01", "2021-01-31",
        source="stac-api", options=StacApiOptions(**options),  # type: ignore[arg-type]
    )  # fmt: skip


# case -> (the message, built as the reader's naming says; what the command line's names;
# what the form's names)
CASES: dict[str, tuple[Callable[[], str], tuple[str, ...], tuple[str, ...]]] = {
    "stac-api-without-url": (
        lambda: StacApiOptions().contradiction("stac-api", "stac-api") or "",
        ("--source stac-api needs --stac-url",),
        ("imagery › Imagery source: stac-api needs imagery › STAC API URL (stac-api)",),
    ),
    "catalog-for-another-source": (
        lambda: StacCatalogOptions(catalog="c.json").contradiction("stac-catalog", "stac-api")
        or "",
        ("--catalog is for --source stac-catalog", "leave --catalog out"),
        ("imagery › STAC catalog (stac-catalog) is for imagery › Imagery source: stac-catalog",),
    ),
    "stac-url-not-a-url": (
        lambda: _raised(lambda: resolve_api(_stac_api("earth-serch"))),
        ("--stac-url 'earth-serch' is neither",),
        ("imagery › STAC API URL (stac-api) 'earth-serch' is neither",),
    ),
    "stac-api-refuses-sentinel-1": (
        lambda: _raised(lambda: resolve_api(_stac_api("earth-search", "sentinel-1"))),
        ("--stac-url planetary-computer (sentinel-1-rtc) or --source earthengine",),
        (
            "from imagery › STAC API URL (stac-api): planetary-computer (sentinel-1-rtc) or "
            "imagery › Imagery source: earthengine",
        ),
    ),
    "stac-signing-without-token-endpoint": (
        lambda: _raised(
            lambda: resolve_api(
                _stac_api("http://127.0.0.1:9/v1", stac_signing="planetary-computer")
            )
        ),
        ("--stac-signing planetary-computer: cannot", "or --stac-signing none"),
        ("imagery › Asset URL signing (stac-api): none",),
    ),
    "stac-api-unreachable": (
        lambda: str(api_error(requests.ConnectionError("refused"), "searching", checking=True)),
        ("check --stac-url",),
        ("check imagery › STAC API URL (stac-api)",),
    ),
    "earthengine-refuses-access": (
        auth_fix,
        ("(--ee-project)", "service account of --ee-key-file"),
        ("(imagery › Google Cloud project (earthengine))",),
    ),
    "earthengine-without-credentials": (
        no_credentials,
        ("give --ee-key-file", "give --ee-project"),
        ("give imagery › Service account key file (earthengine)",),
    ),
    "too-many-points": (
        lambda: _raised(lambda: plan_points(bbox_region(-10, 0, 10, 40), 10)),
        ("raise --spacing",),
        ("raise region › Grid spacing (m)",),
    ),
    "bbox-in-lat-lon-order": (
        lambda: axis_order_hint(-47.86, -67.66, -47.84, -67.64) or "",
        ("give --bbox -67.66,-47.86,-67.64,-47.84",),
        ("give region › Bounding box (degrees): -67.66,-47.86,-67.64,-47.84",),
    ),
    "store-beyond-repair": (
        soundness.no_fix,
        ("export into another --out",),
        ("export into another output › Output store",),
    ),
    "window-too-short-for-steps": (
        lambda: _raised(lambda: TimeSteps("monthly", 12).spans(date(2021, 1, 5), date(2021, 3, 1))),
        ("e.g. --start 2021-01-01 --end 2021-12-31",),
        ("e.g. window › First day: 2021-01-01, window › Last day: 2021-12-31",),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_naming__a_message_names_flags_on_the_command_line_and_fields_in_the_form(
    case: str,
) -> None:
    build, flags, fields = CASES[case]
    form = build()
    with named_as("flags"):
        cli = build()
    for text in fields:
        assert text in form, form
    assert not FLAG.search(form), f"the form's message names a flag: {form}"
    for text in flags:
        assert text in cli, cli
    assert "›" not in cli, f"the command line's message names the form: {cli}"


def _message_strings(path: Path) -> list[tuple[int, str]]:
    """The string literals of a module that can reach a reader: not docstrings, not the
    arguments of a `Flag(...)` declaration (the flag itself, its --help text)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
            skip.add(id(first.value))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Flag":
            skip.update(id(n) for n in ast.walk(node))
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
    ]


# Not settings: a command of the command line (it names no field of the form), and a product's
# declared weights, recorded as they are in every store's attributes.
NOT_SETTINGS = ("--list-models", "--tessera-store picks another")


def test_naming__no_message_of_tasks_or_embedders_hard_codes_a_flag() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in ("tasks", "embedders")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line, text in _message_strings(path)
        if FLAG.search(text) and not any(allowed in text for allowed in NOT_SETTINGS)
    ]
    assert not found, "name settings with embedders.naming.setting:\n" + "\n".join(found)
