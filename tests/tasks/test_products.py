"""The products' contract: every registered product declares every fact, well formed; its
fetches follow from its facts and the run's settings; fetches are shared by one rule, and
keyed the same however a number is spelt."""

import dataclasses
import subprocess
import sys
from datetime import date

import pytest

from embedders.spec import InferenceOptions
from tasks.products import registry as products
from tasks.products import tessera
from tasks.products.product import Fetch, ProductError, ProductRequest, fetches_of, share
from tasks.sources.registry import SensorConfig

REQUEST = ProductRequest(
    start=date(2024, 1, 1),
    end=date(2024, 12, 31),
    patch_px=64,
    source="stac-catalog",
    catalog="/work/swath/demo-catalog-v1/catalog.json",
    collection=None,
    max_cloud_cover=80.0,
    source_options={},
    options=InferenceOptions(),
    weights="auto",
    device="cpu",
)
# The demo's configuration as a model fetches it (models spell their resolution 10), and
# the name of its inputs group on users' disks before keys were canonical.
DEMO = SensorConfig(
    sensor="sentinel-2-l2a",
    catalog="/work/swath/demo-catalog-v1/catalog.json",
    collection="sentinel-2-l2a",
    resolution_m=10,
    patch_px=64,
    start="2024-01-01",
    end="2024-12-31",
    max_cloud_cover=80.0,
)
DEMO_KEY = "sentinel-2-l2a-3ecdc72cfabb"


@pytest.mark.parametrize("name", list(products.PRODUCTS))
def test_facts__every_registered_product_declares_every_fact_well_formed(name: str) -> None:
    assert products.PRODUCTS[name].facts.check() == []


def test_facts__an_empty_or_unknown_fact_is_named() -> None:
    facts = dataclasses.replace(
        tessera.FACTS, url="", source_data=(), sensor="sentinel-9", bands=("B02",)
    )
    problems = "; ".join(facts.check())
    assert "url is empty" in problems and "source_data () must be https:// URLs" in problems
    assert "it fetches the unknown sensor 'sentinel-9'" in problems


def test_facts__a_precomputed_product_does_not_redeclare_its_modules_constants() -> None:
    facts = products.PRODUCTS["tessera"].facts
    assert facts is tessera.FACTS and facts.dim == tessera.DIM
    assert facts.resolution_m == tessera.RESOLUTION_M


def test_products__listing_them_imports_no_model_or_data_library() -> None:
    code = (
        "import sys, tasks.products.registry\n"
        "print([m for m in ('torch', 'zarr', 'pyproj', 'geotessera') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_resolve__an_unknown_product_lists_the_known_ones() -> None:
    with pytest.raises(ProductError, match=r"unknown model 'prithvi'; known models: dofa_base, "):
        products.resolve("prithvi", REQUEST)


def test_key__of_the_demo_configuration_is_what_it_was() -> None:
    assert DEMO.key() == DEMO_KEY


def test_key__ten_and_ten_point_zero_are_one_configuration() -> None:
    assert dataclasses.replace(DEMO, resolution_m=10.0).key() == DEMO_KEY
    assert dataclasses.replace(DEMO, resolution_m=10.5).key() != DEMO_KEY


def test_fetches_of__a_model_fetches_its_bands_with_the_runs_settings() -> None:
    (fetch,) = fetches_of("dofa_base", products.PRODUCTS["dofa_base"].facts, REQUEST)
    assert fetch.config == DEMO and fetch.config.key() == DEMO_KEY
    assert fetch.bands == ("B02", "B03", "B04", "B07", "B11", "B12")


def test_fetches_of__an_annual_product_fetches_its_whole_year_from_its_own_source() -> None:
    window = dataclasses.replace(REQUEST, start=date(2024, 3, 1), end=date(2024, 5, 31))
    (fetch,) = fetches_of("gse", products.PRODUCTS["gse"].facts, window)
    assert (fetch.config.source, fetch.config.composite) == ("earthengine", "mosaic")
    assert (fetch.config.start, fetch.config.end) == ("2024-01-01", "2024-12-31")
    assert fetch.config.max_cloud_cover == 100.0 and fetch.config.catalog == ""
    assert fetches_of("tessera", tessera.FACTS, REQUEST) == ()


def test_share__a_product_declaring_10_0_and_models_declaring_10_share_one_fetch() -> None:
    s2 = products.PRODUCTS["dofa_base"].facts
    other = dataclasses.replace(s2, resolution_m=10.0, bands=("B08",))
    assert isinstance(s2.resolution_m, int)  # the models' spelling
    fetches = share([*fetches_of("dofa_base", s2, REQUEST), *fetches_of("other", other, REQUEST)])
    assert len(fetches) == 1 and fetches[0].config.key() == DEMO_KEY
    assert fetches[0].bands == ("B02", "B03", "B04", "B07", "B08", "B11", "B12")


def test_planned_fetches__models_of_one_sensor_share_one_fetch_gse_has_its_own() -> None:
    fetches = products.planned_fetches(["dofa_base", "ssl4eo_resnet18_rgb", "gse"], REQUEST)
    assert [f.config.sensor for f in fetches] == ["sentinel-2-l2a", "satellite-embedding"]
    assert fetches[0] == Fetch(DEMO, ("B02", "B03", "B04", "B07", "B11", "B12"))


def test_fetches_of__a_sensor_the_source_does_not_serve_is_refused_naming_the_product() -> None:
    facts = dataclasses.replace(products.PRODUCTS["dofa_base"].facts, sensor="satellite-embedding")
    with pytest.raises(ProductError, match=r"^odd: satellite-embedding is not known to come"):
        fetches_of("odd", facts, REQUEST)


def test_fetches_of__a_model_of_two_sensors_fetches_each_as_its_own_configuration() -> None:
    s2, s1 = fetches_of("tessera_otf", products.PRODUCTS["tessera_otf"].facts, REQUEST)
    assert (s2.config.sensor, s1.config.sensor) == ("sentinel-2-l2a", "sentinel-1")
    assert s2.bands == ("B04", "B02", "B03", "B08", "B8A", "B05", "B06", "B07", "B11", "B12")
    assert s1.bands == ("VV", "VH") and s1.config.collection == "sentinel-1-rtc"
    assert s1.config.max_cloud_cover == 100.0 and s2.config.max_cloud_cover == 80.0
    assert len(s2.config.spans()) == len(s1.config.spans()) == 12  # monthly, each sensor
    # its Sentinel-2 fetch is shared with a model reading that sensor's series alone
    alone = dataclasses.replace(products.PRODUCTS["tessera_otf"].facts, more_sensors=())
    run = share([*fetches_of("tessera_otf", products.PRODUCTS["tessera_otf"].facts, REQUEST),
                 *fetches_of("alone", alone, REQUEST)])  # fmt: skip
    assert [f.config.key() for f in run] == [s2.config.key(), s1.config.key()]


def test_identity__of_a_model_of_one_sensor_names_no_other_sensor_or_input_kind() -> None:
    """The fields added for models of several sensors are absent unless set: the keys of
    every earlier model's results stay theirs."""
    for name in ("dofa_base", "dofa_base_s1", "ssl4eo_resnet18_rgb"):
        assert {"more_sensors", "takes"}.isdisjoint(products.registry.get_spec(name).identity())
    otf = products.registry.get_spec("tessera_otf").identity()
    assert otf["more_sensors"] == [["sentinel-1", ["VV", "VH"]]]
    assert otf["takes"] == "pixel-series"
