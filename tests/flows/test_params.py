"""One declaration each: the UI's model list is the product registry, and listing it is cheap."""

import subprocess
import sys

from flows.params import Inference
from tasks.products.registry import PRODUCTS


def test_params__the_models_dropdown_lists_every_product() -> None:
    items = Inference.model_json_schema()["properties"]["models"]["items"]
    assert items["enum"] == list(PRODUCTS)
    assert "tessera" in items["enum"]


def test_params__listing_the_products_imports_no_model_or_data_library() -> None:
    code = (
        "import sys, runpy; sys.argv = ['flows.export', '--list-models'];\n"
        "try:\n    runpy.run_module('flows.export', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy = ['torch', 'torchgeo', 'timm', 'geotessera', 'prefect', 'zarr']\n"
        "print('LOADED', [m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "tessera" in out.stdout and "dofa_base" in out.stdout
    assert "LOADED []" in out.stdout, out.stdout


def _schema() -> dict:
    from prefect.utilities.callables import parameter_schema

    from flows.export import export

    return parameter_schema(export).model_dump(mode="json")


def test_params__every_field_of_the_form_has_a_title_written_for_people() -> None:
    """Issue 22: labels were made from names ('Spacing M', 'Patch Px', 'Ee Url')."""
    from flows.params import SETTINGS

    for model in SETTINGS:
        for name, field in model.model_fields.items():
            # declared (pydantic makes none up here; the schema's would be 'Spacing M')
            assert field.title, f"{model.__name__}.{name} has no title"
            assert field.description, f"{model.__name__}.{name} has no description"
    props = _schema()["definitions"]
    assert props["Region"]["properties"]["spacing_m"]["title"] == "Grid spacing (m)"
    assert props["Imagery"]["properties"]["patch_px"]["title"] == "Patch size (px)"


def test_params__the_limits_the_flow_enforces_are_in_the_forms_schema() -> None:
    defs = _schema()["definitions"]
    imagery, region = defs["Imagery"]["properties"], defs["Region"]["properties"]
    assert (imagery["patch_px"]["minimum"], imagery["patch_px"]["maximum"]) == (8, 4096)
    assert "8 to 4096" in imagery["patch_px"]["description"]
    assert (imagery["max_cloud_cover"]["minimum"], imagery["max_cloud_cover"]["maximum"]) == (
        0,
        100,
    )
    assert region["spacing_m"]["exclusiveMinimum"] == 0
    lon, lat = region["bbox"]["anyOf"][0]["prefixItems"][:2]
    assert (lon["minimum"], lon["maximum"], lat["minimum"], lat["maximum"]) == (-180, 180, -90, 90)
    tiles, auto = defs["Inference"]["properties"]["batch_size"]["anyOf"]
    assert (tiles["minimum"], tiles["maximum"]) == (1, 4096)
    # a const reads "Batch Size is a const and cannot be changed" in the UI; an enum is a choice
    assert "const" not in auto and auto["enum"] == ["auto"]


def test_params__batch_size_takes_a_number_or_auto() -> None:
    import pytest
    from pydantic import ValidationError

    from flows.params import Inference

    assert Inference(batch_size="auto").batch_size == "auto"
    assert Inference(batch_size=8).batch_size == 8
    with pytest.raises(ValidationError):
        Inference(batch_size=0)


def test_params__a_window_ending_before_it_starts_names_the_readers_fields() -> None:
    """The form's field names for the UI and Python, the flags on the command line."""
    import pytest
    from pydantic import ValidationError

    from flows.naming import named_as
    from flows.params import Window

    with pytest.raises(ValidationError) as form:
        Window(start="2024-12-31", end="2024-01-01")
    assert "give window › First day on or before window › Last day" in str(form.value)
    assert "--start" not in str(form.value)
    with named_as("flags"), pytest.raises(ValidationError) as flags:
        Window(start="2024-12-31", end="2024-01-01")
    assert "give --start on or before --end" in str(flags.value)


def test_naming__an_unknown_setting_is_a_key_error() -> None:
    import pytest

    from flows.naming import setting

    assert setting("store") == "output › Output store"
    with pytest.raises(KeyError, match="not_a_setting is not a setting"):
        setting("not_a_setting")
