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
