"""Settings every part of ferry agrees on, resolved in one place.

Order: command-line flags, then environment, then ferry's config file
(`$FERRY_HOME/config.yaml`), then gcloud's own config. With no GCP project anywhere the
backend is `local`, the embedded offline Google Cloud (infra.local).
"""

from __future__ import annotations

import configparser
import getpass
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from infra.errors import UsageError

BACKENDS = ("local", "gcp")
LOCAL_PROJECT = "ferry-local"
DEFAULT_ZONE = "us-central1-a"


def ferry_home() -> Path:
    """Local state: keys, the local service's data, caches."""
    home = os.environ.get("FERRY_HOME")
    return Path(home).expanduser() if home else Path.home() / ".ferry"


def check_home(home: Path) -> Path:
    """FERRY_HOME must be a folder ferry can write (or be creatable): one line otherwise."""
    where = "FERRY_HOME" if os.environ.get("FERRY_HOME") else "ferry's home"
    if home.exists() and not home.is_dir():
        raise UsageError(f"{where} {home} is a file, not a folder", hint="point FERRY_HOME at a folder (it is created if absent)")
    probe = home
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{where} {home} is not writable" + (f" ({probe} is not)" if probe != home else ""),
                         hint="point FERRY_HOME at a folder you can write")
    return home


# GCP's naming rules, checked before any call (a dry run validates as much as the real command).
PROJECT_RE = re.compile(r"(?:[a-z][a-z0-9.-]{0,61}[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]")
BUCKET_PART_RE = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")


def check_project(project: str) -> str:
    if not PROJECT_RE.fullmatch(project):
        raise UsageError(f"invalid project id {project!r}",
                         hint="6-30 lowercase letters, digits or hyphens, starting with a letter, not ending with a hyphen")
    return project


def check_bucket(bucket: str) -> str:
    """Cloud Storage's bucket naming rules (cloud.google.com/storage/docs/buckets#naming)."""
    why = None
    parts = bucket.split(".")
    if not 3 <= len(bucket) <= (222 if "." in bucket else 63):
        why = "3-63 characters (up to 222 with dots, 63 between dots)"
    elif any(not BUCKET_PART_RE.fullmatch(part) for part in parts):
        why = ("lowercase letters, digits, '-', '_' and '.', starting and ending with a letter or digit, "
               "at most 63 between dots, no '..', '.-' or '-.'")
    elif re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", bucket):
        why = "not an IP address"
    elif bucket.startswith("goog") or re.search(r"g[o0][o0]g(l|1)e", bucket):
        why = "not starting with 'goog' nor containing 'google' or a look-alike"
    if why:
        raise UsageError(f"invalid bucket name {bucket!r}", hint=f"bucket names are {why}")
    return bucket


def owner() -> str:
    """The local user, sanitised to a valid GCE label value."""
    try:
        name = getpass.getuser()
    except Exception:  # no passwd entry (containers)
        name = os.environ.get("USER", "user")
    name = re.sub(r"[^a-z0-9_-]", "-", name.lower())[:63]
    return name or "user"


@dataclass(frozen=True)
class Settings:
    backend: str
    project: str
    zone: str
    bucket: str
    home: Path
    json: bool = False
    verbose: bool = False
    sources: dict = field(default_factory=dict, compare=False)  # setting -> where it came from

    @property
    def region(self) -> str:
        return self.zone.rsplit("-", 1)[0]

    @property
    def is_local(self) -> bool:
        return self.backend == "local"

    def with_zone(self, zone: str) -> "Settings":
        return replace(self, zone=zone)


CONFIG_KEYS = ("backend", "project", "zone", "bucket")


def _config_file(home: Path) -> dict:
    path = home / "config.yaml"
    if not path.exists():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UsageError(f"{path}:{where} not valid YAML ({exc.__class__.__name__})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping of settings, e.g. 'project: my-project'")
    for key, value in data.items():
        if key not in CONFIG_KEYS:
            from infra.errors import unknown

            raise unknown(f"setting in {path}:", str(key), CONFIG_KEYS)
        if not isinstance(value, str) or not value.strip():
            raise UsageError(f"{path}: {key} must be text, got {value!r}", hint=f"e.g. '{key}: ...' with a quoted value")
    return data


def _gcloud_config() -> dict:
    """project and zone from gcloud's active configuration, if gcloud was ever set up."""
    root = Path(os.environ.get("CLOUDSDK_CONFIG", Path.home() / ".config" / "gcloud"))
    active = "default"
    try:
        active = (root / "active_config").read_text().strip() or "default"
    except OSError:
        pass
    parser = configparser.ConfigParser()
    try:
        parser.read(root / "configurations" / f"config_{active}")
    except configparser.Error:
        return {}
    out = {}
    if parser.has_option("core", "project"):
        out["project"] = parser.get("core", "project")
    if parser.has_option("compute", "zone"):
        out["zone"] = parser.get("compute", "zone")
    return out


ENV = {
    "backend": ("FERRY_BACKEND",),
    "project": ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT"),
    "zone": ("CLOUDSDK_COMPUTE_ZONE", "FERRY_ZONE"),
    "bucket": ("FERRY_BUCKET",),
}


def resolve(
    backend: str | None = None,
    project: str | None = None,
    zone: str | None = None,
    bucket: str | None = None,
    json: bool = False,
    verbose: bool = False,
) -> Settings:
    home = check_home(ferry_home())
    flags = {"backend": backend, "project": project, "zone": zone, "bucket": bucket}
    layers = [
        ("flag", flags),
        ("environment", {k: next((os.environ[e] for e in names if os.environ.get(e)), None) for k, names in ENV.items()}),
        (str(home / "config.yaml"), _config_file(home)),
        ("gcloud config", _gcloud_config()),
    ]
    values: dict = {}
    sources: dict = {}
    for key in ("backend", "project", "zone", "bucket"):
        for source, layer in layers:
            if layer.get(key):
                values[key] = str(layer[key])
                sources[key] = source
                break

    chosen = values.get("backend")
    if chosen is not None and chosen not in BACKENDS:
        raise UsageError(f"unknown backend {chosen!r}", hint="valid: local, gcp")
    if chosen is None:
        chosen = "gcp" if values.get("project") else "local"
        sources["backend"] = "default (a GCP project is configured)" if chosen == "gcp" else "default (no GCP project configured)"
    if chosen == "gcp" and not values.get("project"):
        raise UsageError(
            "the gcp backend needs a project",
            hint="pass --project, set GOOGLE_CLOUD_PROJECT, or run 'gcloud config set project ID'",
        )
    if chosen == "local":
        # The local cloud has one project; a configured GCP project does not apply to it.
        proj = LOCAL_PROJECT
        sources["project"] = "local backend"
    else:
        proj = check_project(values["project"])
    zone_value = values.get("zone") or DEFAULT_ZONE
    if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+-[a-z]", zone_value):
        raise UsageError(f"invalid zone {zone_value!r}", hint="zones look like us-central1-a")
    bucket_value = check_bucket(values.get("bucket") or (f"{proj.rsplit(':', 1)[-1]}-ferry" if chosen == "gcp" else "ferry-local"))
    return Settings(
        backend=chosen,
        project=proj,
        zone=zone_value,
        bucket=bucket_value,
        home=home,
        json=json,
        verbose=verbose,
        sources=sources,
    )
