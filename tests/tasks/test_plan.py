import json

import numpy as np
import pytest
from pyproj import Transformer

from tasks.plan.chunks import make_chunks
from tasks.plan.points import plan_points
from tasks.plan.regions import PlanError, bbox_region, geojson_region

PATAGONIA = (-67.66, -47.86, -67.62, -47.84)


def test_plan__points_lie_on_the_utm_grid_at_the_spacing():
    points = plan_points(bbox_region(*PATAGONIA), 250)
    assert len(points) > 50
    assert {p.epsg for p in points} == {32719}
    to_utm = Transformer.from_crs(4326, 32719, always_xy=True)
    for p in points:
        assert p.x % 250 == 0 and p.y % 250 == 0
        x, y = to_utm.transform(p.lon, p.lat)
        assert abs(x - p.x) < 1e-3 and abs(y - p.y) < 1e-3
        assert p.id == f"32719-{int(p.x)}-{int(p.y)}"


def test_plan__ids_are_stable_across_overlapping_regions():
    small = plan_points(bbox_region(-67.65, -47.855, -67.63, -47.845), 250)
    large = plan_points(bbox_region(*PATAGONIA), 250)
    assert {p.id for p in small} < {p.id for p in large}


def test_plan__order_is_north_to_south_then_west_to_east():
    points = plan_points(bbox_region(*PATAGONIA), 500)
    keys = [(-p.y, p.x) for p in points]
    assert keys == sorted(keys)


def test_plan__region_across_a_utm_zone_boundary_uses_each_points_zone():
    # -66 deg is the boundary between zones 19 and 20
    points = plan_points(bbox_region(-66.05, -47.86, -65.95, -47.84), 500)
    by_zone = {e: [p for p in points if p.epsg == e] for e in (32719, 32720)}
    assert by_zone[32719] and by_zone[32720]
    assert all(p.lon < -66 for p in by_zone[32719])
    assert all(p.lon >= -66 for p in by_zone[32720])
    assert len({p.id for p in points}) == len(points)


def test_plan__region_across_the_equator_splits_hemispheres_without_duplicates():
    points = plan_points(bbox_region(5.0, -0.01, 5.02, 0.01), 250)
    assert {p.epsg for p in points} == {32631, 32731}
    assert all((p.lat >= 0) == (p.epsg == 32631) for p in points)
    locations = {(round(p.lon, 6), round(p.lat, 6)) for p in points}
    assert len(locations) == len(points)


def test_plan__polygon_holes_are_respected():
    outer = [
        [-67.66, -47.86],
        [-67.62, -47.86],
        [-67.62, -47.84],
        [-67.66, -47.84],
        [-67.66, -47.86],
    ]
    hole = [
        [-67.65, -47.855],
        [-67.63, -47.855],
        [-67.63, -47.845],
        [-67.65, -47.845],
        [-67.65, -47.855],
    ]
    with_hole = geojson_region(json.dumps({"type": "Polygon", "coordinates": [outer, hole]}))
    solid = geojson_region(json.dumps({"type": "Polygon", "coordinates": [outer]}))
    inside_hole = [
        p for p in plan_points(solid, 250) if -67.65 < p.lon < -67.63 and -47.855 < p.lat < -47.845
    ]
    kept = {p.id for p in plan_points(with_hole, 250)}
    assert inside_hole and not kept & {p.id for p in inside_hole}


def test_plan__feature_collections_are_accepted():
    geom = {
        "type": "Polygon",
        "coordinates": [[[-67.66, -47.86], [-67.62, -47.86], [-67.62, -47.84], [-67.66, -47.86]]],
    }
    fc = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": {}, "geometry": geom}],
    }
    assert geojson_region(json.dumps(fc)).equals(geojson_region(json.dumps(geom)))


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ((10, 0, 5, 1), r"west \(10\) is not less than east \(5\)"),
        ((0, -95, 1, 1), "latitude out of range"),
        ((0, 0, 1, 91), "latitude out of range"),
    ],
)
def test_plan__bad_bbox_is_refused(bbox, message):
    with pytest.raises(PlanError, match=message):
        bbox_region(*bbox)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "does not parse as JSON"),
        ('{"type": "Point", "coordinates": [0, 0]}', "holds a Point, not a polygon"),
        ('{"type": "FeatureCollection", "features": []}', "has no features"),
        ("[1, 2]", "is not a GeoJSON object"),
    ],
)
def test_plan__bad_geojson_is_refused(text, message):
    with pytest.raises(PlanError, match=message):
        geojson_region(text)


@pytest.mark.parametrize("spacing", [0, -5, float("nan")])
def test_plan__spacing_must_be_positive(spacing):
    with pytest.raises(PlanError, match="spacing must be a positive number of metres"):
        plan_points(bbox_region(*PATAGONIA), spacing)


def test_plan__polar_regions_are_refused_with_the_utm_limit():
    with pytest.raises(PlanError, match="UTM grids cover"):
        plan_points(bbox_region(0, 84.5, 1, 85), 1000)


def test_plan__huge_plans_are_refused_before_they_are_built():
    with pytest.raises(PlanError, match=r"raise region › Grid spacing \(m\)"):
        plan_points(bbox_region(-10, 0, 10, 40), 10)


def test_chunks__are_consecutive_and_deterministic():
    points = plan_points(bbox_region(*PATAGONIA), 250)
    chunks = make_chunks(points, 16)
    assert [c.start for c in chunks] == list(range(0, len(points), 16))
    assert sum(len(c.points) for c in chunks) == len(points)
    again = make_chunks(plan_points(bbox_region(*PATAGONIA), 250), 16)
    assert [c.key for c in chunks] == [c.key for c in again]
    assert len({c.key for c in chunks}) == len(chunks)
    assert np.all([c.stop - c.start <= 16 for c in chunks])


def test_plan_file__chunks_read_the_same_points_as_an_in_memory_plan(tmp_path):
    region = bbox_region(-66.05, -47.86, -65.95, -47.84)  # two UTM zones
    in_memory = plan_points(region, 250)
    table = plan_points(region, 250, path=str(tmp_path / "plan.zarr"))
    assert len(table) == len(in_memory) and table.digest == in_memory.digest
    on_file, held = make_chunks(table, 7), make_chunks(in_memory, 7)
    assert [c.key for c in on_file] == [c.key for c in held]
    assert all(c.plan and not c.inline for c in on_file)  # keys only: points read on demand
    assert [p for c in on_file for p in c.points] == list(in_memory)
    again = plan_points(region, 250, path=str(tmp_path / "plan.zarr"))  # opened, not redone
    assert again.digest == table.digest and len(again) == len(table)


SCALE_SCRIPT = """
import pickle, sys, tempfile
from tasks.plan.chunks import make_chunks
from tasks.plan.points import plan_points
from tasks.plan.regions import bbox_region
from tests.memory import peak_kib

width = float(sys.argv[1])
region = bbox_region(10.0, 40.0, 10.0 + width, 40.0 + width / 2)
with tempfile.TemporaryDirectory() as folder:
    table = plan_points(region, 100, path=f"{folder}/plan.zarr")
    chunks = make_chunks(table, 1024)
    largest = max(len(pickle.dumps(c)) for c in chunks)
    peak = peak_kib() * 1024
    print(len(table), len(chunks), largest, peak)
"""


def test_plan__memory_does_not_grow_with_the_region_and_chunks_stay_small_keys():
    """A plan ten times larger (0.47 M and 4.8 M points) peaks at about the same memory: the
    points go to the plan file a block at a time, and the flow keeps only chunk keys."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    figures = []
    for width in (1.0, 3.2):
        out = subprocess.run(
            [sys.executable, "-c", SCALE_SCRIPT, str(width)],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        figures.append([int(v) for v in out])
    (n_small, chunks_small, key_small, peak_small), (n_large, _, key_large, peak_large) = figures
    assert n_large >= 9.5 * n_small and n_small > 400_000 and chunks_small > 400
    assert max(key_small, key_large) < 300  # bytes a chunk takes to pass to a task
    assert peak_large <= 1.2 * peak_small, (peak_small, peak_large)
