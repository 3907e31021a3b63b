"""Plugins are found through real installed-package metadata (a dist-info on sys.path)."""

import sys
from pathlib import Path

import pytest

from embedders.plugins import PluginError, merged, plugins
from tests.plugin_site import install as _install


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("toy_plugin")]:
        del sys.modules[name]


def test_plugins__an_installed_entry_point_is_loaded_by_name(site: Path) -> None:
    _install(site, "toy_plugin_a", "swath.models", {"toy": "toy_plugin_a:ENTRY"}, "ENTRY = 42\n")
    assert plugins("swath.models") == {"toy": 42}
    assert plugins("swath.sources") == {}


def test_plugins__one_that_does_not_load_is_named(site: Path) -> None:
    _install(site, "toy_plugin_b", "swath.sources", {"bad": "toy_plugin_b:MISSING"}, "")
    with pytest.raises(PluginError, match=r"'bad'.*does not load"):
        plugins("swath.sources")


def test_merged__a_plugin_may_not_take_a_name_swath_has(site: Path) -> None:
    _install(site, "toy_plugin_c", "swath.products", {"tessera": "toy_plugin_c:X"}, "X = 1\n")
    with pytest.raises(PluginError, match="tessera"):
        merged("swath.products", {"tessera": object()})


def test_plugins__an_unknown_group_is_refused() -> None:
    with pytest.raises(ValueError, match=r"swath\.sources"):
        plugins("swath.other")


def test_registry__a_plugin_that_is_not_a_model_entry_is_refused(site: Path) -> None:
    from embedders import registry

    _install(site, "toy_plugin_d", "swath.models", {"toy": "toy_plugin_d:X"}, "X = 1\n")
    with pytest.raises(PluginError, match=r"'toy' is not an embedders\.spec\.ModelEntry"):
        registry._with_plugins(registry.OWN)


def test_registry__reads_an_installed_model_beside_its_own(site: Path) -> None:
    from embedders import registry

    module = (
        "import dataclasses\nfrom embedders import dofa\nfrom embedders.spec import ModelEntry\n"
        "ENTRY = ModelEntry(dataclasses.replace(dofa.SPEC, name='toy'), 'embedders.dofa:build')\n"
    )
    _install(site, "toy_plugin_e", "swath.models", {"toy": "toy_plugin_e:ENTRY"}, module)
    found = registry._with_plugins(registry.OWN)
    assert list(found) == [*registry.OWN, "toy"] and found["toy"].spec.name == "toy"


def test_products__a_plugin_that_is_not_a_product_entry_is_refused(site: Path) -> None:
    from tasks.products import registry as products

    _install(site, "toy_plugin_f", "swath.products", {"toy": "toy_plugin_f:X"}, "X = 1\n")
    with pytest.raises(PluginError, match=r"toy are not tasks\.products\.product\.ProductEntry"):
        products._registry()
