"""The job catalog: one declarative YAML file per job in jobs/catalog/.

A job file names the command run on the VM (an argv list, never a shell line), the datasets
it needs, its default VM template and its parameters with their defaults. `{name}` in a
command element is replaced by a parameter's value or by one of the run's paths:
`{out}` (the job's output folder), `{data}` (the datasets folder), `{code}` (the synced code),
`{run_id}`. A parameter with a `flag` is appended as `flag value` (omitted when its value is
null; a bool adds the flag alone when true).

Parameter types encode what the job's program accepts, so that a bad value is refused before
anything is created: `int`, `float` (finite), `str` (optionally a `pattern`), `bool`,
`choice`, and `epoch-list` (none, all, last, or indices like 0,last, each below the job's
`epochs`; `min_items`). `min`/`max` bound numbers; `requires: {param: value}` allows a value
only with another parameter so set (e.g. a batch size only in minibatch mode).

`resume: FLAG` says the job writes checkpoints into `{out}/checkpoints` (trainer/checkpoint.py)
and continues from a folder of them given as `FLAG DIR`: a run preempted or lost on one VM
then resumes on the next where it stopped (`run --spot`, `--recover N`, `resume RUN`).
Without it a recovered run starts the job over.
tests/jobs/test_catalog.py checks every built-in job against the trainer's own parser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import UsageError, unknown

CATALOG_DIR = Path(__file__).resolve().parent / "catalog"
PARAM_TYPES = ("int", "float", "str", "bool", "choice", "epoch-list")
PATH_PLACEHOLDERS = ("out", "data", "code", "run_id")


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: object = None
    help: str = ""
    flag: str | None = None
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    pattern: str | None = None
    requires: tuple = ()      # ((param, value), ...): allowed only with those set so
    min_items: int = 0        # epoch-list: at least this many epochs


@dataclass(frozen=True)
class Job:
    name: str
    description: str
    command: tuple
    datasets: tuple = ()
    template: str = "default"
    params: dict = field(default_factory=dict)  # name -> Param, in file order
    path: Path | None = None
    resume: str | None = None  # the flag that continues the job from a checkpoints folder

    def defaults(self) -> dict:
        return {name: p.default for name, p in self.params.items()}


def _load(path: Path) -> Job:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping")
    missing = [k for k in ("name", "description", "command") if not raw.get(k)]
    if missing:
        raise UsageError(f"{path}: missing {', '.join(missing)}")
    if raw["name"] != path.stem:
        raise UsageError(f"{path}: name {raw['name']!r} differs from the file name")
    command = raw["command"]
    if not isinstance(command, list) or not all(isinstance(a, (str, int, float)) for a in command):
        raise UsageError(f"{path}: command must be a list of strings (an argv, not a shell line)")
    params = {}
    for name, spec in (raw.get("params") or {}).items():
        if not isinstance(spec, dict):
            spec = {"type": type(spec).__name__ if spec is not None else "str", "default": spec}
        ptype = spec.get("type", "str")
        if ptype not in PARAM_TYPES:
            raise UsageError(f"{path}: parameter {name!r} has unknown type {ptype!r}")
        if name in PATH_PLACEHOLDERS:
            raise UsageError(f"{path}: parameter name {name!r} is reserved")
        params[name] = Param(
            name=name,
            type=ptype,
            default=spec.get("default"),
            help=str(spec.get("help", "")),
            flag=spec.get("flag"),
            choices=tuple(spec.get("choices") or ()),
            min=spec.get("min"),
            max=spec.get("max"),
            pattern=spec.get("pattern"),
            requires=tuple(sorted((spec.get("requires") or {}).items())),
            min_items=int(spec.get("min_items") or 0),
        )
    return Job(
        name=raw["name"],
        description=" ".join(str(raw["description"]).split()),
        command=tuple(str(a) for a in command),
        datasets=tuple(raw.get("datasets") or ()),
        template=str(raw.get("template") or "default"),
        params=params,
        path=path,
        resume=_resume_flag(path, raw.get("resume")),
    )


def _resume_flag(path: Path, value) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("-") or " " in value:
        raise UsageError(f"{path}: resume must be the job's flag for a checkpoints folder, e.g. --resume")
    return value


def load_all(directory: Path = CATALOG_DIR) -> dict[str, Job]:
    jobs = {}
    for path in sorted(directory.glob("*.yaml")):
        job = _load(path)
        jobs[job.name] = job
    return jobs


def get(name: str, directory: Path = CATALOG_DIR) -> Job:
    """The job called `name`; an unknown name is a UsageError naming the closest ones."""
    path = directory / f"{name}.yaml"
    if "/" not in name and path.is_file():
        return _load(path)
    raise unknown("job", name, [p.stem for p in directory.glob("*.yaml")])
