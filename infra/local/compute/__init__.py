"""Local Compute Engine: catalog (static facts), models (state and the state machine),
validation (request rules -> stored resource), resource (links, ids, fingerprints), faults,
filters, exceptions (GCE error shapes), responses (HTTP <-> models), urls (path -> handler)."""
