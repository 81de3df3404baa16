"""``hydra/sweeper=jobs``: a multirun of listed jobs, each its own list of overrides, for the
sweeps that are no cartesian product (a subset of a grid's cells, each with its own seeds). Generic:
it knows Hydra jobs, not what they train."""
