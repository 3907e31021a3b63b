"""Small Cloud-Optimized GeoTIFFs for the tests of the STAC sources."""

from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def write_cog(
    path: Path,
    data: np.ndarray,
    *,
    epsg: int,
    x0: float,
    y0: float,
    res: float,
    nodata: float | None = 0,
    blocksize: int = 64,
) -> None:
    """One band of `data` as a COG, north-up, its top-left corner at (x0, y0) in `epsg`."""
    profile = {
        "driver": "COG",
        "width": data.shape[1],
        "height": data.shape[0],
        "count": 1,
        "dtype": data.dtype.name,
        "crs": f"EPSG:{epsg}",
        "transform": Affine(res, 0, x0, 0, -res, y0),
        "nodata": nodata,
        "blocksize": blocksize,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
