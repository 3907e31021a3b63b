"""Band facts the models need, declared once: Sentinel-2 band names, centre wavelengths,
bandwidths, Sentinel-1's polarisations, and the band statistics the models normalise with.
Imports nothing.

tasks/sources/sensors.py builds its sensor tables (collections, masks, Earth Engine names) from
these; models import them from here, so that embedders/ depends on nothing in tasks/.
"""

# Sentinel-2 MSI: centre wavelengths (micrometres) of Sentinel-2A in ESA's "Sentinel-2 User
# Handbook" (ESA, 2015), Table 1, in ESA order with B8A and the cirrus band B10. Band names
# use the two-digit form (B02, not B2) that STAC catalogs of Sentinel-2 L2A use as asset keys.
S2_WAVELENGTH_UM: dict[str, float] = {
    "B01": 0.443, "B02": 0.490, "B03": 0.560, "B04": 0.665, "B05": 0.705, "B06": 0.740,
    "B07": 0.783, "B08": 0.842, "B8A": 0.865, "B09": 0.945, "B10": 1.375, "B11": 1.610,
    "B12": 2.190,
}  # fmt: skip

# Bandwidths (nm) of Sentinel-2A, the same table of the same handbook; Copernicus-FM's
# spectral patch embedding takes them beside the centre wavelengths.
S2_BANDWIDTH_NM: dict[str, float] = {
    "B01": 20, "B02": 65, "B03": 35, "B04": 30, "B05": 15, "B06": 15, "B07": 20,
    "B08": 115, "B8A": 20, "B09": 20, "B10": 30, "B11": 90, "B12": 180,
}  # fmt: skip

# The 13 Level-1C bands in ESA order, as SSL4EO-S12 stacks them.
ALL_BANDS: tuple[str, ...] = tuple(S2_WAVELENGTH_UM)
# Level-2A products drop the cirrus band B10.
L2A_BANDS: tuple[str, ...] = tuple(b for b in ALL_BANDS if b != "B10")

# The SSL4EO-S12 Sentinel-2 band statistics torchgeo declares for its Sentinel-2 models:
# `_mean_s2` / `_std_s2` in torchgeo/models/resnet.py (torchgeo 0.10.1), 13 Level-1C bands
# in ESA order, digital numbers; (mean, std). DOFA, CROMA, Panopticon and Copernicus-FM
# leave normalisation to the sensor and take these.
S2_MEAN_STD: dict[str, tuple[float, float]] = {
    "B01": (1612.9, 791.0),
    "B02": (1397.6, 854.3),
    "B03": (1322.3, 878.7),
    "B04": (1373.1, 1144.9),
    "B05": (1561.0, 1127.5),
    "B06": (2108.4, 1164.2),
    "B07": (2390.7, 1276.0),
    "B08": (2318.7, 1249.5),
    "B8A": (2581.0, 1345.9),
    "B09": (837.7, 577.5),
    "B10": (22.0, 47.5),
    "B11": (2195.2, 1340.0),
    "B12": (1537.4, 1142.9),
}


def wavelengths_um(bands: tuple[str, ...]) -> tuple[float, ...]:
    """Centre wavelength of each named Sentinel-2 band, in micrometres."""
    return tuple(S2_WAVELENGTH_UM[b] for b in bands)


def bandwidths_nm(bands: tuple[str, ...]) -> tuple[float, ...]:
    """Bandwidth of each named Sentinel-2 band, in nanometres."""
    return tuple(S2_BANDWIDTH_NM[b] for b in bands)


def s2_means(bands: tuple[str, ...]) -> tuple[float, ...]:
    """The SSL4EO-S12 mean of each named band (normalisation of a spec)."""
    return tuple(S2_MEAN_STD[b][0] for b in bands)


def s2_stds(bands: tuple[str, ...]) -> tuple[float, ...]:
    """The SSL4EO-S12 standard deviation of each named band."""
    return tuple(S2_MEAN_STD[b][1] for b in bands)


# Sentinel-1 C-SAR, the two polarisations of its Interferometric Wide swath mode (IW) over
# land: VV (vertical transmit, vertical receive) and VH (vertical transmit, horizontal
# receive). swath delivers them in decibels (tasks/sources/sensors.py).
S1_BANDS: tuple[str, ...] = ("VV", "VH")

# DOFA's wavelengths for Sentinel-1: its v1 weights take VV and VH at 3.75 um each, a
# placeholder that marks the radar modality, not the C band's physical wavelength (torchgeo
# 0.10.1, torchgeo/models/dofa.py, DOFA.forward_features: "For Sentinel-1 VV/VH, the DOFA v1
# weights use [3.75, 3.75] as modality placeholders rather than physical wavelengths").
DOFA_S1_WAVELENGTH_UM: dict[str, float] = {"VV": 3.75, "VH": 3.75}

# The SSL4EO-S12 Sentinel-1 GRD statistics torchgeo declares for its Sentinel-1 models, in
# dB (backscatter sigma0 from Earth Engine's COPERNICUS/S1_GRD, the source of SSL4EO-S12's
# radar): `_mean_s1` / `_std_s1` in torchgeo/models/resnet.py (torchgeo 0.10.1, after
# zhu-xlab/DeCUR linear_BE_resnet.py); (mean, std).
S1_MEAN_STD_DB: dict[str, tuple[float, float]] = {"VV": (-12.59, 5.26), "VH": (-20.26, 5.91)}


def dofa_wavelengths_um(bands: tuple[str, ...]) -> tuple[float, ...]:
    """The wavelength DOFA takes for each band: Sentinel-2's centre wavelengths, and its
    placeholder for Sentinel-1's polarisations."""
    return tuple(DOFA_S1_WAVELENGTH_UM.get(b) or S2_WAVELENGTH_UM[b] for b in bands)


def s1_means(bands: tuple[str, ...]) -> tuple[float, ...]:
    """The SSL4EO-S12 mean of each named Sentinel-1 band, in dB."""
    return tuple(S1_MEAN_STD_DB[b][0] for b in bands)


def s1_stds(bands: tuple[str, ...]) -> tuple[float, ...]:
    """The SSL4EO-S12 standard deviation of each named Sentinel-1 band, in dB."""
    return tuple(S1_MEAN_STD_DB[b][1] for b in bands)
