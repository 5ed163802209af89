"""The only place the backends differ: endpoints and credentials for the official clients.

`compute(settings)` -> `Compute`: Compute Engine over REST (infra.gce: the requests compute_v1's
REST transport sends, without its ~1 s import) with one endpoint and one set of credentials,
plus the pacing the backend calls for (how often to poll an operation, how long to watch a new
VM for a late stockout, how long SSH may take). `compute_api()`: the official compute_v1
package for what still wants its types (dry-run body checks, tests against the local cloud).
`storage_client(settings)` -> google.cloud.storage.Client. Everything above this module is
one code path for `gcp` and `local`.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field

from infra.errors import CloudError, say_retrying
from infra.settings import Settings

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
AUTH_HINT = "run `gcloud auth application-default login`, or set GOOGLE_APPLICATION_CREDENTIALS to a key file"


@dataclass(frozen=True)
class Pacing:
    poll_s: float            # between zone-operation polls
    op_timeout_s: float      # one operation, at most (setters, starts, stops)
    settle_s: float          # a new VM must stay RUNNING this long (stockout after insert)
    ssh_timeout_s: float     # from RUNNING to SSH answering
    ssh_poll_s: float
    insert_timeout_s: float  # an insert operation, at most (GPU VMs take minutes)
    delete_timeout_s: float  # a delete, from the first call to DONE
    wait_call_s: float       # client timeout of one zoneOperations.wait call (GCE holds it ~2 min)
    guest_poll_s: float      # between a VM's reads of its own guest attributes (GCE: <= 10 a minute)
    auth_grace_s: float      # SSH answers but refuses ferry's key this long: OS Login is in the way
    idle_timeout_s: float    # a run's VM that no runner claimed this long after boot powers off


GCP_PACING = Pacing(poll_s=2.0, op_timeout_s=300.0, settle_s=15.0, ssh_timeout_s=300.0, ssh_poll_s=3.0,
                    insert_timeout_s=900.0, delete_timeout_s=600.0, wait_call_s=150.0, guest_poll_s=6.0,
                    auth_grace_s=120.0, idle_timeout_s=900.0)
LOCAL_PACING = Pacing(poll_s=0.03, op_timeout_s=60.0, settle_s=0.5, ssh_timeout_s=30.0, ssh_poll_s=0.1,
                      insert_timeout_s=60.0, delete_timeout_s=60.0, wait_call_s=5.0, guest_poll_s=0.1,
                      auth_grace_s=5.0, idle_timeout_s=20.0)


_COMPUTE_V1 = "google.cloud.compute_v1"


def compute_api():
    """The official `google.cloud.compute_v1` package, loading only what is used.

    Its `__init__` imports all ~100 service clients (~1 s); ferry uses a handful. Unless the
    package is already imported, this registers it without running that `__init__` and resolves
    `compute_v1.<Name>Client` from `services/<name>/` and every other name from `types/` on first
    access (PEP 562). Same classes, same wire calls; any later `from google.cloud import
    compute_v1` gets this same module.
    """
    module = sys.modules.get(_COMPUTE_V1)
    if module is not None:
        return module
    spec = importlib.util.find_spec(_COMPUTE_V1)
    if spec is None or spec.submodule_search_locations is None:  # not the layout we know
        return importlib.import_module(_COMPUTE_V1)
    package = importlib.util.module_from_spec(spec)

    def resolve(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        if name.endswith("Client"):
            service = re.sub(r"(?<!^)(?=[A-Z])", "_", name[: -len("Client")]).lower()
            where = f"{_COMPUTE_V1}.services.{service}"
        else:
            where = f"{_COMPUTE_V1}.types"
        try:
            value = getattr(importlib.import_module(where), name)
        except (ImportError, AttributeError):
            raise AttributeError(f"module {_COMPUTE_V1!r} has no attribute {name!r}") from None
        setattr(package, name, value)
        return value

    package.__getattr__ = resolve
    sys.modules[_COMPUTE_V1] = package
    import google.cloud

    google.cloud.compute_v1 = package
    return package


def credentials(settings: Settings):
    """The local cloud's access token on local (a bearer token, as any OAuth access token);
    Application Default Credentials on gcp (one line if missing)."""
    if settings.is_local:
        from google.oauth2.credentials import Credentials

        from infra.local.service import ensure_running

        return Credentials(token=ensure_running(settings.home).token)
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError

    try:
        creds, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
    except DefaultCredentialsError:
        raise CloudError("no Google Cloud credentials found", hint=AUTH_HINT) from None
    return creds


_ANNOUNCED: set = set()
LOCAL_LINE = "backend: local (no GCP project configured: --project P or GOOGLE_CLOUD_PROJECT)"


def _announce_local(settings: Settings) -> None:
    """Say in one line (stderr) that commands talk to the local cloud because no GCP project is
    configured: once per shell session (the first command a shell runs with this FERRY_HOME),
    and on every command with -v. Bad input fails before this, so its error stays one line."""
    if not str(settings.sources.get("backend", "")).startswith("default") or str(settings.home) in _ANNOUNCED:
        return
    _ANNOUNCED.add(str(settings.home))
    if settings.verbose or _first_in_this_shell(settings.home):
        print(LOCAL_LINE, file=sys.stderr, flush=True)


def _first_in_this_shell(home) -> bool:
    """Whether no command of this shell (the parent process, told apart from a later one with
    the same pid by its start time) said the line yet; remembers that it now has."""
    import json
    import os
    from pathlib import Path

    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/stat", "rb") as f:
            started = f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        started = "?"
    me = f"{ppid}:{started}"
    path = Path(home) / "announced.json"
    try:
        seen = json.loads(path.read_text())
        seen = seen if isinstance(seen, list) else []
    except (OSError, ValueError):
        seen = []
    if me in seen:
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".announced.{os.getpid()}")
        tmp.write_text(json.dumps((seen + [me])[-64:]))
        os.replace(tmp, path)
    except OSError:
        pass
    return True


def endpoints(settings: Settings) -> dict:
    """{"compute": url|None, "storage": url|None, "batch": url|None, "pacing": Pacing}: None means
    Google's public endpoints. A local cloud timed like GCE (`FERRY_LOCAL_TIMING=gce`) gets GCE's
    pacing, scaled."""
    if settings.is_local:
        from infra.local.service import ensure_running

        _announce_local(settings)
        ep = ensure_running(settings.home)
        pacing = LOCAL_PACING if ep.timing != "gce" else scaled(GCP_PACING, ep.time_scale, floor=LOCAL_PACING)
        return {"compute": ep.compute, "storage": ep.storage, "batch": ep.batch, "pacing": pacing}
    return {"compute": None, "storage": None, "batch": None, "pacing": GCP_PACING}


def scaled(pacing: Pacing, scale: float, floor: Pacing) -> Pacing:
    """PACING with every duration times SCALE, never below FLOOR's."""
    from dataclasses import fields

    return Pacing(**{f.name: max(getattr(pacing, f.name) * scale, getattr(floor, f.name)) for f in fields(Pacing)})


@dataclass
class Compute:
    """Compute Engine for one backend: `infra.gce.Gce` (REST, plain-dict results) with one endpoint
    and one set of credentials, its services as attributes (`instances`, `zone_operations`,
    `accelerator_types`, `machine_types`, `zones`, `regions`, `projects`), and the pacing."""

    project: str
    backend: str
    endpoint: str | None
    creds: object
    pacing: Pacing
    _api: object = field(default=None, repr=False)

    @property
    def api(self):
        if self._api is None:
            from infra.gce import Gce

            self._api = Gce(self.creds, self.endpoint)
        return self._api

    instances = property(lambda self: self.api.instances)
    zone_operations = property(lambda self: self.api.zone_operations)
    accelerator_types = property(lambda self: self.api.accelerator_types)
    machine_types = property(lambda self: self.api.machine_types)
    zones = property(lambda self: self.api.zones)
    regions = property(lambda self: self.api.regions)
    projects = property(lambda self: self.api.projects)


_CACHE: dict = {}


def compute(settings: Settings) -> Compute:
    """Compute Engine for SETTINGS' backend (starts the local service if needed)."""
    key = (settings.backend, settings.project, str(settings.home))
    bundle = _CACHE.get(key)
    if bundle is None:
        ep = endpoints(settings)
        bundle = Compute(
            project=settings.project,
            backend=settings.backend,
            endpoint=ep["compute"],
            creds=credentials(settings),
            pacing=ep["pacing"],
        )
        _CACHE[key] = bundle
    return bundle


def storage_client(settings: Settings):
    """google.cloud.storage.Client for the backend (local: the emulator, anonymous). Its
    requests session says once on stderr when the service answers with a status the client
    retries (its default retries last up to two minutes: no silent wait)."""
    from google.cloud import storage

    ep = endpoints(settings)["storage"]
    options = {"client_options": {"api_endpoint": ep}} if ep else {}
    client = storage.Client(project=settings.project, credentials=credentials(settings), **options)
    client._http.hooks["response"].append(_say_when_retried)  # the client's own AuthorizedSession
    return client


_RETRIED = {408, 429, 500, 502, 503, 504}  # google.cloud.storage.retry's retryable statuses


def _say_when_retried(response, *args, **kwargs):
    if response.status_code in _RETRIED:  # DEFAULT_RETRY's deadline: 120 s
        say_retrying("Cloud Storage", f"{response.status_code} {response.reason or ''}".rstrip(), 120)
    return response


def batch(settings: Settings):
    """google.cloud.batch_v1.BatchServiceClient (REST transport) for the backend, with the
    credentials of the Compute Engine clients (local: the local Cloud Batch)."""
    from google.cloud import batch_v1

    ep = endpoints(settings)["batch"]
    options = {"api_endpoint": ep} if ep else None
    return batch_v1.BatchServiceClient(transport="rest", credentials=compute(settings).creds, client_options=options)


def reset_cache() -> None:
    """Forget built clients (tests that restart the local service)."""
    _CACHE.clear()
