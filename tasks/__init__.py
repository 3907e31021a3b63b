"""What an export does, stage by stage: plain functions, and thin Prefect tasks around them.

Packages own the concepts: plan/ (region -> points -> chunks -> write blocks), sources/
(imagery sources and sensor facts), products/ (what `--models` names, and the precomputed
products), store/ (the output store). The stages are modules here: prefetch (imagery into
the inputs store, `inputs`), infer and produce (a product's results for a chunk, `results`),
write (into the output store); options holds settings declared once, caching Prefect's
cache keys."""
