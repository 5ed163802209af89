"""Jobs: the catalog, code sync, the on-VM runner, run records, pulling results and reports."""
