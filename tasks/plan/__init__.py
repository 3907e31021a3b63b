"""The plan: a region parsed and checked (regions), its points on their UTM grids, kept in a
plan file (points), the chunks tasks get (chunks) and the write blocks chunks are grouped
into (shards)."""
