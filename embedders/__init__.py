"""Models that turn image tiles into embeddings: specs, builders, tiling and the batching engine.

Nothing here knows about Prefect, imagery sources or environment variables; band facts
(wavelengths) come from tasks/sensors.py, which imports nothing.
"""
