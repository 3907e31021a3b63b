"""Products, the names `--models` takes: what a product is and declares (product: its facts,
the Product protocol, the settings it is resolved from, the one rule of shared fetches), the
registry of every product (registry), and the precomputed products tessera and gse.
Model-backed products are resolved in tasks/infer.py."""
