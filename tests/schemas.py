"""The published JSON schemas of the conventions swath's stores follow, from local copies
(tests/data/schemas/README.md names where each comes from), with every `$ref` resolved
among them: validation needs no network."""

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema_specifications import REGISTRY as METASCHEMAS
from referencing import Registry, Resource

SCHEMAS = Path(__file__).parent / "data" / "schemas"
GEOEMB = SCHEMAS / "geoemb" / "schema.json"
# The embeddings extension's v0.0.1 schema at each commit of its main branch that changed it
# (tests/data/schemas/README.md); the last is the newest.
STAC_EMBEDDINGS = {
    rev: SCHEMAS / "stac-embeddings" / f"schema-{rev}.json"
    for rev in ("c3c8451", "4794ca0", "0a9cb04")
}
CURRENT = ("4794ca0", "0a9cb04")  # the revisions since `data_type` replaced `emb:dtype`
STAC_COLLECTION = (
    SCHEMAS / "stac-spec" / "v1.0.0" / "collection-spec" / "json-schema" / "collection.json"
)


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


@cache
def registry() -> Registry:
    """Every copied schema under its `$id`, with the JSON Schema metaschemas."""
    resources = []
    for path in sorted(SCHEMAS.rglob("*.json")):
        contents = load(path)
        if "$id" in contents:
            uri = contents["$id"].rstrip("#")
            resources.append((uri, Resource.from_contents(contents)))
    return METASCHEMAS.with_resources(resources)


def errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Each way `instance` fails `schema`, in words (the path and the message); [] when valid."""
    validator = jsonschema.validators.validator_for(schema)(schema, registry=registry())
    found = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '.'}: {_message(e)}" for e in found]


def _message(error: jsonschema.ValidationError) -> str:
    """The error, or for a oneOf/anyOf the deepest of its causes (the branch that came
    closest), so that a failure says which field is wrong."""
    if error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return f"{'/'.join(map(str, best.absolute_path))}: {best.message}"
    return error.message


def geoemb_attributes_schema() -> dict[str, Any]:
    """The convention's schema for a group's `attributes`, applied to an array's: its
    `attributes` subschema with the definitions it refers to."""
    schema = load(GEOEMB)
    return {"$schema": schema["$schema"], "$defs": schema["$defs"]} | schema["properties"][
        "attributes"
    ]


def stac_embeddings(rev: str, kind: str) -> dict[str, Any]:
    """The embeddings extension's schema at `rev`, its part for a `kind` ("Feature" for an
    Item, "Collection"): the whole schema takes one of the two, and says little on failure."""
    schema = load(STAC_EMBEDDINGS[rev])
    part = schema["oneOf"][0 if kind == "Feature" else 1]
    return {"$schema": schema["$schema"], "definitions": schema["definitions"]} | part
