"""Sentinel-2 MSI band facts, declared once.

Centre wavelengths and native resolutions are those of Sentinel-2A in ESA's
"Sentinel-2 User Handbook" (ESA, 2015), Table 1. Band names use the two-digit
form (B02, not B2) that STAC catalogs of Sentinel-2 L2A use as asset keys.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    name: str
    common_name: str
    wavelength_um: float
    resolution_m: int


BANDS: dict[str, Band] = {
    b.name: b
    for b in (
        Band("B01", "coastal", 0.443, 60),
        Band("B02", "blue", 0.490, 10),
        Band("B03", "green", 0.560, 10),
        Band("B04", "red", 0.665, 10),
        Band("B05", "rededge1", 0.705, 20),
        Band("B06", "rededge2", 0.740, 20),
        Band("B07", "rededge3", 0.783, 20),
        Band("B08", "nir", 0.842, 10),
        Band("B8A", "nir08", 0.865, 20),
        Band("B09", "nir09", 0.945, 60),
        Band("B10", "cirrus", 1.375, 60),
        Band("B11", "swir16", 1.610, 20),
        Band("B12", "swir22", 2.190, 20),
    )
}

# The 13 Level-1C bands in ESA order, as SSL4EO-S12 stacks them.
ALL_BANDS: tuple[str, ...] = tuple(BANDS)
# Level-2A products drop the cirrus band B10.
L2A_BANDS: tuple[str, ...] = tuple(b for b in BANDS if b != "B10")


def wavelengths_um(bands: tuple[str, ...]) -> tuple[float, ...]:
    """Centre wavelength of each named band, in micrometres."""
    return tuple(BANDS[b].wavelength_um for b in bands)
