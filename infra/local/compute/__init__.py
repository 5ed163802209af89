"""Local Compute Engine: catalog (static facts), models (state + rules), faults, filters,
exceptions (GCE error shapes), responses (HTTP <-> models), urls (path -> handler)."""
