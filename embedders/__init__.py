"""Models that turn image tiles into embeddings: specs, builders, tiling and the batching engine.

Nothing here knows about Prefect, imagery sources or environment variables, and nothing here
imports from tasks/: the band facts models need (wavelengths, bandwidths, statistics) are in
embedders/bands.py, which tasks/sources/sensors.py builds on; and how a message of any layer
names a setting (its flag, or the form's field) is in embedders/naming.py.
"""
