"""Edgent: on-demand partitioned, right-sized inference of a multi-exit model (Li et al., 2019)."""
