"""Sensor facts, declared once with their provenance: bands, scale and offset, cloud-mask
rules, and the collection each imagery source serves them under.

Every source delivers a sensor's bands on one scale (for Sentinel-2 L2A: surface reflectance
x 10,000, as digital numbers before processing baseline 04.00), so a model's normalisation
holds whichever source fetched its input. Importing this module imports nothing heavy.
"""

from dataclasses import dataclass, field

from embedders.bands import ALL_BANDS as ALL_BANDS
from embedders.bands import L2A_BANDS as L2A_BANDS
from embedders.bands import S1_BANDS, S2_WAVELENGTH_UM
from embedders.bands import S2_BANDWIDTH_NM as S2_BANDWIDTH_NM
from embedders.bands import bandwidths_nm as bandwidths_nm
from embedders.bands import wavelengths_um as wavelengths_um
from embedders.encoding import FLOAT32, INT16, INT16_FILL, Encoding


@dataclass(frozen=True)
class Band:
    name: str
    common_name: str
    wavelength_um: float
    resolution_m: int
    ee_name: str = ""  # the band's name in Earth Engine's collection, where it differs


@dataclass(frozen=True)
class Sensor:
    """A sensor as swath fetches it: its bands and, per source, where it lives and how its
    values are harmonised and masked."""

    name: str
    bands: dict[str, Band]
    resolution_m: float
    collections: dict[str, str]  # source name -> the collection id swath uses by default
    cloud_cover_property: dict[str, str] = field(default_factory=dict)  # source -> property
    provenance: str = ""
    source_data: tuple[str, ...] = ()  # URLs of the missions behind its values (STAC, geoemb:)
    # How the inputs store keeps its values (embedders.encoding): int16 for imagery.
    encoding: Encoding = FLOAT32


# The missions' pages, as the STAC embeddings extension and geoemb: cite source data.
SENTINEL_1_MISSION = "https://sentinel.esa.int/web/sentinel/missions/sentinel-1"
SENTINEL_2_MISSION = "https://sentinel.esa.int/web/sentinel/missions/sentinel-2"

# Sentinel-2 MSI. Native resolutions are those of Sentinel-2A in ESA's "Sentinel-2 User
# Handbook" (ESA, 2015), Table 1; centre wavelengths and bandwidths, from the same table, are
# declared with the models' band facts (embedders/bands.py). Earth Engine names the bands
# without the zero (B2), per its catalog page of COPERNICUS/S2_SR_HARMONIZED.
_S2 = (
    ("B01", "coastal", 60, "B1"),
    ("B02", "blue", 10, "B2"),
    ("B03", "green", 10, "B3"),
    ("B04", "red", 10, "B4"),
    ("B05", "rededge1", 20, "B5"),
    ("B06", "rededge2", 20, "B6"),
    ("B07", "rededge3", 20, "B7"),
    ("B08", "nir", 10, "B8"),
    ("B8A", "nir08", 20, "B8A"),
    ("B09", "nir09", 60, "B9"),
    ("B10", "cirrus", 60, "B10"),
    ("B11", "swir16", 20, "B11"),
    ("B12", "swir22", 20, "B12"),
)
BANDS: dict[str, Band] = {
    name: Band(name, common, S2_WAVELENGTH_UM[name], res, ee) for name, common, res, ee in _S2
}

# Harmonisation. From processing baseline 04.00 (25 January 2022) ESA adds 1000 to every L2A
# digital number, so that negative reflectances survive in uint16 (ESA, "Sentinel-2: New
# processing baseline 04.00", the BOA_ADD_OFFSET of the product metadata). swath removes it
# per item, from the item's metadata, so that every date is on the scale of before 04.00.
# Earth Engine's COPERNICUS/S2_SR_HARMONIZED has removed it already.
S2_BOA_ADD_OFFSET_DN = 1000.0
S2_OFFSET_FROM_BASELINE = (4, 0)
S2_PROCESSING_BASELINE_PROPERTY = "s2:processing_baseline"  # the STAC sat/s2 extension
# Earth Search's own flag: true where it has removed the offset already. Element 84 calls it
# the truth where it and the asset's raster:bands offset disagree (github Element84/earth-search
# issue 9); its issue trackers also report items whose flag itself is wrong (Element84/
# earth-search issues 66 and 71, cirrus-geo/cirrus-earth-search issue 33), and its
# sentinel-2-c1-l2a collection leaves the offset in the values (no flag, raster:bands offset
# -0.1). tasks/sources/plausibility.py checks each item's pixels against what was decided.
EARTH_SEARCH_OFFSET_APPLIED_PROPERTY = "earthsearch:boa_offset_applied"

# No data. ESA's L2A products mark missing pixels with digital number 0 in every band, before
# and after baseline 04.00 (the NODATA special value of the product metadata, "Sentinel-2
# Products Specification Document", S2-PDGS-TAS-DI-PSD, Special Values: NODATA 0, SATURATED
# 65535). Planetary Computer declares no nodata in its items or its collection, so the STAC
# sources mask DN 0 of Sentinel-2 L2A whatever an item's metadata says.
S2_NODATA_DN = 0.0

# Sentinel-2 L2A scene classification (STAC asset "SCL"). Masked classes, from ESA's
# "Sentinel-2 Products Specification Document" (S2-PDGS-TAS-DI-PSD), L2A Scene
# Classification table: 0 no data, 1 saturated or defective, 3 cloud shadows, 8 cloud medium
# probability, 9 cloud high probability, 10 thin cirrus. Kept: 2 dark area, 4 vegetation,
# 5 not vegetated, 6 water, 7 unclassified, 11 snow or ice.
SCL_ASSET = "SCL"
# The same asset's key on Earth Search (v1), whose Sentinel-2 assets are named in lower case
# after common names ("blue", "scl"), per its sentinel-2-l2a collection's item_assets.
SCL_ASSET_KEYS: tuple[str, ...] = (SCL_ASSET, "scl")
SCL_MASKED_CLASSES: tuple[int, ...] = (0, 1, 3, 8, 9, 10)
SCL_SNOW_CLASS = 11  # kept, but bright whatever the offset: left out of plausibility checks

# Earth Engine masks with Cloud Score+ (Pasquarella et al., CVPR 2023 workshops), not SCL:
# it scores each pixel's clearness against a cloud-free reference with shadows included,
# and Google's catalog page of the dataset recommends it over SCL and QA60 for compositing.
# A pixel is kept where `cs_cdf` >= 0.60, the middle of the 0.50-0.65 range that page
# recommends. Its images share the system:index of the Sentinel-2 images they score.
CLOUD_SCORE_PLUS = "GOOGLE/CLOUD_SCORE_PLUS/V1/S2_HARMONIZED"
CLOUD_SCORE_PLUS_BAND = "cs_cdf"
CLOUD_SCORE_PLUS_CLEAR = 0.60
# Cloud Score+ scores Sentinel-2 scenes only: the sensors whose Earth Engine pixels it masks.
CLOUD_SCORE_PLUS_SENSORS: tuple[str, ...] = ("sentinel-2-l2a",)

SENTINEL_2_L2A = Sensor(
    name="sentinel-2-l2a",
    bands=BANDS,
    resolution_m=10.0,
    collections={
        "stac-catalog": "sentinel-2-l2a",
        "stac-api": "sentinel-2-l2a",  # Planetary Computer's and Earth Search's id
        "earthengine": "COPERNICUS/S2_SR_HARMONIZED",
    },
    cloud_cover_property={
        "stac-catalog": "eo:cloud_cover",
        "stac-api": "eo:cloud_cover",
        "earthengine": "CLOUDY_PIXEL_PERCENTAGE",
    },
    provenance="ESA Sentinel-2 User Handbook (2015); Level-2A surface reflectance x 10,000",
    source_data=(SENTINEL_2_MISSION,),
    # Whole digital numbers (harmonised L2A: -1000 to 64,535, valid reflectance well below
    # 32,767) fit int16 exactly; a median of an even number of dates is rounded to them.
    encoding=INT16,
)

# Google's Satellite Embedding (AlphaEarth Foundations), annual, 64 bands A00..A63 at 10 m:
# unit-length vectors per pixel, one image per year and UTM zone, per the catalog page of
# GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL (Brown et al., 2025, arXiv:2507.22291).
SATELLITE_EMBEDDING = Sensor(
    name="satellite-embedding",
    bands={f"A{i:02d}": Band(f"A{i:02d}", f"A{i:02d}", 0.0, 10) for i in range(64)},
    resolution_m=10.0,
    collections={"earthengine": "GOOGLE/SATELLITE_EMBEDDING/V1/ANNUAL"},
    provenance="Google DeepMind AlphaEarth Foundations, Satellite Embedding V1 (annual)",
    # AlphaEarth Foundations' optical and radar inputs (Brown et al., 2025, Table 1), among
    # others (GEDI, climate and elevation data).
    source_data=(SENTINEL_1_MISSION, SENTINEL_2_MISSION, "https://landsat.gsfc.nasa.gov/"),
)

# Sentinel-1 C-SAR backscatter, VV and VH of the Interferometric Wide swath mode (IW), in
# decibels (10 log10 of the backscatter coefficient), on every source's 10 m pixel spacing.
#
# Per source, what the collection holds and how swath brings it to dB:
# - Planetary Computer `sentinel-1-rtc` (and a static catalog in its shape): assets `vv` and
#   `vh`, float32 COGs of terrain-corrected gamma naught in linear power, raster:bands nodata
#   -32768, on a UTM grid (proj:epsg) at 10 m; items carry sar:instrument_mode,
#   sar:polarizations and sat:orbit_state (the STAC sar and sat extensions). From the
#   collection's item_assets in microsoft/planetary-computer-tasks,
#   datasets/sentinel-1-rtc/collection/template.json, and a recorded item
#   (tests/data/stac/README.md). swath takes 10 log10 of each date's values before the median.
# - Earth Engine `COPERNICUS/S1_GRD`: bands VV, VH (and HH, HV, angle) of sigma naught in dB
#   already ("log scaling", 10*log10(x), per its catalog page), ortho-corrected with the
#   Sentinel-1 Toolbox (thermal noise removal, radiometric calibration, terrain correction);
#   images filtered on instrumentMode, transmitterReceiverPolarisation (a list) and
#   orbitProperties_pass.
# - Earth Search: its only Sentinel-1 collection, `sentinel-1-grd`, indexes ESA's GRD
#   products in the requester-pays bucket sentinel-s1-l1c, in radar geometry (ground control
#   points, no map grid): swath refuses it (tasks/sources/stac_api.py says how).
# Gamma naught (RTC, terrain-flattened) and sigma naught (GRD, ellipsoid-normalised) differ on
# slopes: a model's statistics hold for either only as far as the two agree (flat ground).
SENTINEL_1_SENSOR = "sentinel-1"
S1_CENTER_FREQUENCY_GHZ = 5.405  # sar:center_frequency of the items; the catalog page's 5.405GHz
S1_RESOLUTION_M = 10  # sar:pixel_spacing_range and _azimuth of IW GRD high resolution
# Planetary Computer's nodata for its RTC assets (raster:bands nodata of item_assets), masked
# whatever an item declares (a static catalog may declare none).
S1_NODATA = -32768.0
# Backscatter at or below this (dB) is masked as no signal: GRD border noise and the zeros
# around a scene's valid footprint (10 log10 of 0 is -inf), far below the noise-equivalent
# sigma naught of IW mode (-22 dB at worst, ESA "Sentinel-1 User Handbook", 2013, Table 2).
S1_DB_FLOOR = -50.0
# Earth Engine's properties of COPERNICUS/S1_GRD images (its catalog page, Image Properties).
S1_EE_INSTRUMENT_MODE = "instrumentMode"
S1_EE_POLARISATIONS = "transmitterReceiverPolarisation"
S1_EE_ORBIT_PASS = "orbitProperties_pass"  # "ASCENDING" or "DESCENDING"
S1_INSTRUMENT_MODE = "IW"
# The same facts in the STAC sar and sat extensions (sar v1.0.0, sat v1.0.0).
S1_STAC_INSTRUMENT_MODE = "sar:instrument_mode"
S1_STAC_POLARISATIONS = "sar:polarizations"
S1_STAC_ORBIT_STATE = "sat:orbit_state"  # "ascending" or "descending"
# Stored as int16 hundredths of a dB: -327.67 to +327.67 dB, rounded to the nearest 0.01 dB
# (an error of at most 0.005 dB, 0.12 % in linear power), NaN as int16's lowest value.
S1_DB_ENCODING = Encoding(fill=INT16_FILL, scale=0.01)

S1_WAVELENGTH_UM = round(299_792_458 / (S1_CENTER_FREQUENCY_GHZ * 1e9) * 1e6, 1)  # C band

SENTINEL_1 = Sensor(
    name=SENTINEL_1_SENSOR,
    bands={b: Band(b, b.lower(), S1_WAVELENGTH_UM, S1_RESOLUTION_M, b) for b in S1_BANDS},
    resolution_m=float(S1_RESOLUTION_M),
    collections={
        "stac-catalog": "sentinel-1-rtc",
        "stac-api": "sentinel-1-rtc",  # Planetary Computer's id
        "earthengine": "COPERNICUS/S1_GRD",
    },
    provenance="ESA Sentinel-1 C-SAR IW, VV and VH backscatter in dB (10 log10): gamma0 RTC "
    "from STAC (Planetary Computer sentinel-1-rtc, linear power converted), sigma0 GRD from "
    "Earth Engine COPERNICUS/S1_GRD",
    source_data=(SENTINEL_1_MISSION,),
    encoding=S1_DB_ENCODING,
)

SENSORS: dict[str, Sensor] = {s.name: s for s in (SENTINEL_2_L2A, SENTINEL_1, SATELLITE_EMBEDDING)}


def encoding_of(sensor: str) -> Encoding:
    """How the inputs store keeps `sensor`'s values."""
    facts = SENSORS.get(sensor)
    if facts is None:
        raise KeyError(f"no sensor facts for {sensor!r}; known sensors: {', '.join(SENSORS)}")
    return facts.encoding


def default_collection(sensor: str, source: str) -> str:
    """The collection id swath uses for `sensor` from `source`. Raises KeyError naming what
    is known."""
    facts = SENSORS.get(sensor)
    if facts is None:
        raise KeyError(f"no sensor facts for {sensor!r}; known sensors: {', '.join(SENSORS)}")
    if source not in facts.collections:
        raise KeyError(
            f"{sensor} is not known to come from the {source} source; it comes from "
            f"{', '.join(facts.collections)}"
        )
    return facts.collections[source]


def s2_processing_baseline(value: object) -> tuple[int, int] | None:
    """'05.09' -> (5, 9); None when absent or unreadable."""
    try:
        major, minor = str(value).split(".")[:2]
        return int(major), int(minor)
    except (ValueError, TypeError):
        return None


def s2_offset_dn(properties: dict[str, object], asset_fields: dict[str, object]) -> float:
    """The digital-number offset to add to an item's L2A values to harmonise them (0 or -1000).

    In order, from the item's own metadata: Earth Search's flag that the offset is removed
    already; the asset's raster:bands offset and scale (Earth Search declares -0.1 and
    0.0001 from 04.00 on); the processing baseline (Planetary Computer, Copernicus). Without
    any of them the item is taken as harmonised (a user's own catalog, pre-04.00 data).
    """
    return s2_offset_decision(properties, asset_fields)[0]


def s2_offset_decision(
    properties: dict[str, object], asset_fields: dict[str, object]
) -> tuple[float, str]:
    """s2_offset_dn's offset and the metadata that decided it, in words (for the notes of an
    item whose pixels contradict it)."""
    baseline = properties.get(S2_PROCESSING_BASELINE_PROPERTY)
    on = f", {S2_PROCESSING_BASELINE_PROPERTY} {baseline}" if baseline is not None else ""
    if properties.get(EARTH_SEARCH_OFFSET_APPLIED_PROPERTY) is True:
        return 0.0, f"{EARTH_SEARCH_OFFSET_APPLIED_PROPERTY} true{on}: offset removed already"
    bands = asset_fields.get("raster:bands") or asset_fields.get("bands") or []
    for band in bands if isinstance(bands, list) else []:
        if isinstance(band, dict) and band.get("offset") and band.get("scale"):
            offset = round(float(band["offset"]) / float(band["scale"]))
            flag = properties.get(EARTH_SEARCH_OFFSET_APPLIED_PROPERTY, "absent")
            flag = str(flag).lower() if isinstance(flag, bool) else flag
            return offset, (
                f"raster:bands offset {band['offset']} and scale {band['scale']} "
                f"({EARTH_SEARCH_OFFSET_APPLIED_PROPERTY} {flag}{on}): {offset:+d} DN to remove"
            )
    parsed = s2_processing_baseline(baseline)
    if parsed is not None and parsed >= S2_OFFSET_FROM_BASELINE:
        return -S2_BOA_ADD_OFFSET_DN, f"{on[2:]}: -1000 DN to remove"
    if parsed is not None:
        return 0.0, f"{on[2:]}: no offset (before 04.00)"
    return 0.0, "no offset metadata: taken as harmonised"


def s2_offset_possible(properties: dict[str, object]) -> bool:
    """Whether an item's processing baseline says its values were produced with ESA's offset
    (04.00 or later)."""
    baseline = s2_processing_baseline(properties.get(S2_PROCESSING_BASELINE_PROPERTY))
    return baseline is not None and baseline >= S2_OFFSET_FROM_BASELINE


def nodata_dn(sensor: str) -> tuple[float, ...]:
    """Values that mean no data for every item of `sensor`, whatever its metadata declares:
    (0,) for Sentinel-2 L2A, Planetary Computer's -32768 for Sentinel-1, none for others."""
    if sensor == SENTINEL_2_L2A.name:
        return (S2_NODATA_DN,)
    return (S1_NODATA,) if sensor == SENTINEL_1_SENSOR else ()


def dn_offset(sensor: str, properties: dict[str, object], asset_fields: dict[str, object]) -> float:
    """The offset to add to an asset's values of an item of `sensor` to bring them onto the
    sensor's harmonised scale: s2_offset_dn for Sentinel-2 L2A, 0 for every other sensor."""
    if sensor == SENTINEL_2_L2A.name:
        return s2_offset_dn(properties, asset_fields)
    return 0.0
