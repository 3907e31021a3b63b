"""Store identity: what a product's values depend on, declared and versioned, and nothing else.

A cosmetic change (a reworded description, another product in the registry, another work
directory for the demo) keeps a store resumable and appendable; a real change (other
weights, other bands, a bumped version) is refused, naming the field that differs.
"""

import dataclasses
import json
from datetime import date
from pathlib import Path

import pytest
import xarray as xr
import zarr

from embedders import registry
from flows.export import export, scheduled_day
from flows.job import UsageError, plan_job, resolve_job
from flows.params import Imagery, Inference, Output, Region, Window
from tasks import infer
from tasks.products import registry as products
from tasks.store.layout import read_meta

INSIDE = (-67.655, -47.858, -67.63, -47.850)
MODEL = "ssl4eo_resnet18_rgb"


def params(tmp_path: Path, catalog: str, *, window=None, work="work") -> dict:
    return {
        "region": Region(bbox=INSIDE, spacing_m=400),
        "window": window or Window(),
        "imagery": Imagery(catalog=catalog, patch_px=32),
        "inference": Inference(models=[MODEL], weights="random", batch_size=4),
        "output": Output(store=str(tmp_path / "e.zarr"), work_dir=str(tmp_path / work)),
    }


def resolve(p: dict):
    return resolve_job(plan_job(**p, today=scheduled_day()))


def patch_spec(monkeypatch: pytest.MonkeyPatch, **changes) -> None:
    """The registry as a later release would have it; models built anew, as in a new process."""
    monkeypatch.setattr(infer, "_models", {})
    entry = registry.MODELS[MODEL]
    spec = dataclasses.replace(entry.spec, **changes)
    monkeypatch.setitem(registry.MODELS, MODEL, dataclasses.replace(entry, spec=spec))


def test_identity__cosmetic_changes_keep_the_store_resumable_and_appendable(
    tmp_path, served_demo, monkeypatch
):
    first = export(**params(tmp_path, served_demo.url))
    patch_spec(monkeypatch, description="reworded: a ResNet-18 from SSL4EO-S12", family="other")
    monkeypatch.setitem(
        products.PRODUCTS, "unrelated", dataclasses.replace(products.PRODUCTS["tessera"])
    )
    job = resolve(params(tmp_path, served_demo.url))
    assert job.resume, "a reworded description must not make the store another export"
    export(**params(tmp_path, served_demo.url))  # resumes: nothing to redo
    later = Window(start=date(2025, 1, 1), end=date(2025, 1, 31))
    export(**params(tmp_path, served_demo.url, window=later))  # appends a time entry
    with xr.open_zarr(first["store"]) as ds:
        assert ds.sizes["time"] == 2


@pytest.mark.parametrize(
    ("change", "field", "old", "new"),
    [
        ({"seed": 1}, "weights.identity", '"seed=0"', '"seed=1"'),
        ({"version": 2}, "model.version", "1", "2"),
        ({"norm_std": (1.0, 1.0, 1.0)}, "model.norm_std", "[10000.0", "[1.0"),
    ],
)
def test_identity__a_real_change_is_refused_naming_the_field(
    tmp_path, served_demo, monkeypatch, change, field, old, new
):
    export(**params(tmp_path, served_demo.url))
    patch_spec(monkeypatch, **change)
    with pytest.raises(UsageError) as refused:
        resolve(params(tmp_path, served_demo.url))
    message = str(refused.value)
    assert f"models.{MODEL}.identity.{field}: store has {old}" in message
    assert f"this run has {new}" in message


def test_identity__the_demo_into_the_same_store_from_another_work_dir_resumes(tmp_path):
    p = params(tmp_path, "demo", work="work-a")
    p["region"] = Region(bbox=INSIDE, spacing_m=800)
    export(**p)
    again = params(tmp_path, "demo", work="work-b")
    again["region"] = p["region"]
    assert resolve(again).resume


def test_identity__a_store_of_an_older_format_is_refused_with_what_to_do(tmp_path, served_demo):
    first = export(**params(tmp_path, served_demo.url))
    meta = read_meta(first["store"])["swath"]
    group = zarr.open_group(first["store"], mode="r+")
    kept = {k: v for k, v in group.attrs.items() if k not in ("swath_sums", "swath_seal")}
    group.attrs.put({**kept, "swath": json.dumps({**meta, "format": 1})})  # recorded no sums
    with pytest.raises(
        UsageError, match=r"older swath \(store format 1.*export into another output › Output store"
    ):
        resolve(params(tmp_path, served_demo.url))
