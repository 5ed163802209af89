"""A local Google Cloud on 127.0.0.1: Compute Engine REST, Cloud Storage, VMs over SSH.

- `infra.local.service`: start/stop the background service; `ensure_running()` -> Endpoints.
- `infra.local.control`: faults and the request log (`Control`).
- `infra.local.testing`: `local_cloud(home)` for tests.
- `infra.local.compute`: the Compute Engine server (models / responses / exceptions / urls).
- `infra.local.storage`: the Cloud Storage emulator, threaded, with its gaps closed.
- `infra.local.vm`: the VM runtime (SSH server, sandboxed disk, metadata server).

Nothing heavy is imported here: importing this package costs nothing.
"""

VERSION = "1"  # of the local service's state and control interface
