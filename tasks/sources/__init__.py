"""Imagery sources: what a source is and the registry of sources (registry), sensor facts
(sensors), and each source: stac_catalog and stac_api (over what they share, stac),
earthengine (with its credentials, earthengine_auth); the offline demo catalog (demo) and
GDAL's retries, counted (gdal_log)."""
