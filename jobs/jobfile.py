"""Job files: the one schema every job has, built-in (jobs/catalog/*.yaml) or the user's own.

A job file is YAML. Every error names the file, the line and the field, with what is allowed,
on one line (`job.yaml:7: command: ...`), before anything is created:

    name: my-job                  # optional (default: the file's name, or its folder's for job.yaml)
    description: what it does     # optional
    workdir: .                    # the folder synced to the VM (relative to this file; default: its folder)
    setup:                        # once per VM and workdir code hash; cached
      - [python3, -m, pip, install, -r, requirements.txt]
      - shell: 'echo run by bash'
    command: [python3, train.py, --out, '{out}']   # an argv, never a shell line
    # command: {shell: 'python3 train.py --out {out} | tee log.txt'}   # explicitly run by bash
    env: {MY_VAR: value}          # plain variables (written to the run's records)
    secrets: [WANDB_API_KEY]      # local environment variables passed over SSH only
    datasets: [mnist, ./data, gs://bucket/prefix, {name: mine, from: ./data}]
    outputs: ['model/*.npz']      # globs in the workdir, uploaded as artifacts when the job ends
    resources: {template: default, gpu: t4, spot: false, max_hours: 2}
    resume: --resume              # the job's flag for a checkpoints folder (see catalog.py)
    params: {epochs: {type: int, default: 10, min: 1, flag: --epochs}}

Lines come from PyYAML's composed nodes (every key keeps its start mark).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from infra.errors import UsageError

PARAM_TYPES = ("int", "float", "str", "bool", "choice", "epoch-list")
PATH_PLACEHOLDERS = ("out", "data", "code", "run_id")
BUILTIN_DATASETS = ("mnist", "15scene")
FIELDS = ("name", "description", "workdir", "setup", "command", "env", "secrets", "datasets", "outputs",
          "resources", "resume", "params")
RESOURCE_FIELDS = ("template", "gpu", "spot", "max_hours")
PARAM_FIELDS = ("type", "default", "help", "flag", "choices", "min", "max", "pattern", "requires", "min_items")
JOB_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
DATASET_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RESERVED_ENV = ("PYTHONPATH", "PYTHONUNBUFFERED", "HOME", "PATH")
JOB_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Dataset:
    """A dataset a job needs: built-in (`mnist`), a local folder or a gs:// prefix, staged as
    gs://BUCKET/datasets/<name>/ and on the VM as {data}/<name>/."""
    name: str
    source: str | None = None   # None: built-in; else a local folder (absolute) or gs://bucket/prefix

    @property
    def kind(self) -> str:
        if self.source is None:
            return "builtin"
        return "gs" if self.source.startswith("gs://") else "local"

    def __str__(self) -> str:
        return self.name if self.source is None else f"{self.name} (from {self.source})"


@dataclass(frozen=True)
class Command:
    """An argv, or (shell=True) one bash script: `argv[0]` then is the script."""
    argv: tuple
    shell: bool = False

    def text(self) -> str:
        import shlex

        return self.argv[0] if self.shell else shlex.join(self.argv)


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
    command: tuple                 # the argv (a shell job: ("bash", "-c", SCRIPT, NAME))
    datasets: tuple = ()           # dataset names (what the runner stages), in file order
    template: str = "default"
    params: dict = field(default_factory=dict)  # name -> Param, in file order
    path: Path | None = None
    resume: str | None = None      # the flag that continues the job from a checkpoints folder
    workdir: Path | None = None    # absolute; ferry's trainer/ for the built-in jobs
    shell: bool = False            # command is {shell: ...}: run by bash
    setup: tuple = ()              # Command, ...
    env: dict = field(default_factory=dict)
    secrets: tuple = ()
    sources: tuple = ()            # Dataset, ... (datasets with where they come from)
    outputs: tuple = ()
    gpu: str | None = None
    spot: bool | None = None
    max_hours: float | None = None
    builtin: bool = False

    def defaults(self) -> dict:
        return {name: p.default for name, p in self.params.items()}

    @property
    def own_workdir(self) -> bool:
        """The job's workdir is its own (synced to ferry/code/work/), not ferry's trainer/."""
        from jobs.sync import REPO

        return self.workdir is not None and self.workdir != (REPO / "trainer")


# --------------------------------------------------------------------------- YAML with lines
class _Doc:
    """The composed document: values and the line of every key path."""

    def __init__(self, path: Path, text: str):
        import yaml

        self.path = path
        self.lines: dict[tuple, int] = {}
        try:
            loader = yaml.SafeLoader(text)
            try:
                node = loader.get_single_node()
                self._index(node, ())
                self.data = loader.construct_document(node) if node is not None else None
            finally:
                loader.dispose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            raise UsageError(f"{path}:{line}: not valid YAML: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}:1: not valid YAML ({exc.__class__.__name__})") from None

    def _index(self, node, where: tuple) -> None:
        import yaml

        if node is None:
            return
        self.lines.setdefault(where, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.value)
                self.lines[(*where, name)] = key.start_mark.line + 1
                self._index(value, (*where, name))
                self.lines[(*where, name)] = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._index(item, (*where, i))

    def line(self, where: tuple) -> int:
        while where and where not in self.lines:
            where = where[:-1]
        return self.lines.get(where, 1)

    def error(self, where: tuple, message: str) -> UsageError:
        fieldname = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in where).replace(".[", "[")
        return UsageError(f"{self.path}:{self.line(where)}: {fieldname or 'file'}: {message}")


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _argv(doc: _Doc, where: tuple, value, what: str) -> Command:
    if isinstance(value, dict):
        if set(value) != {"shell"} or not isinstance(value["shell"], str) or not value["shell"].strip():
            raise doc.error(where, f"{what} as a mapping must be exactly {{shell: 'a bash script'}}")
        return Command((value["shell"],), shell=True)
    if isinstance(value, str):
        raise doc.error(where, f"{what} must be an argv list like [python3, train.py] "
                               f"(a shell line needs the explicit form {{shell: {value[:40]!r}}})")
    if not isinstance(value, list) or not value:
        raise doc.error(where, f"{what} must be a non-empty argv list like [python3, train.py], or {{shell: '...'}}")
    for i, a in enumerate(value):
        if not _scalar(a):
            raise doc.error((*where, i), f"argv elements must be strings or numbers (got {type(a).__name__})")
    return Command(tuple(str(a) for a in value))


def _relative_glob(doc: _Doc, where: tuple, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.error(where, "an output is a glob relative to the workdir, like 'model/*.npz'")
    p = PurePosixPath(value)
    if p.is_absolute() or value.startswith("~") or ".." in p.parts:
        raise doc.error(where, f"{value!r} escapes the workdir: outputs are globs inside it, like 'model/*.npz'")
    return value


def _dataset(doc: _Doc, where: tuple, value, base: Path, check_paths: bool) -> Dataset:
    from jobs.datasets import check_gs_uri

    if isinstance(value, dict):
        unknown_keys = set(value) - {"name", "from"}
        if unknown_keys or "from" not in value:
            raise doc.error(where, "a dataset mapping is {name: NAME, from: ./folder | gs://bucket/prefix}")
        name, source = value.get("name"), value["from"]
        if not isinstance(source, str) or not source:
            raise doc.error((*where, "from"), "a local folder or gs://bucket/prefix")
    elif isinstance(value, str) and value:
        name, source = None, value
        if value in BUILTIN_DATASETS:
            return Dataset(value)
        if "/" not in value and not value.startswith("."):
            raise doc.error(where, f"{value!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), "
                                   "a local folder (./data) or gs://bucket/prefix")
    else:
        raise doc.error(where, f"a dataset is a built-in name ({', '.join(BUILTIN_DATASETS)}), a local folder, "
                               "gs://bucket/prefix, or {name: NAME, from: ...}")
    if source.startswith("gs://"):
        reason = check_gs_uri(source)
        if reason:
            raise doc.error(where, reason)
        default = source.rstrip("/").rsplit("/", 1)[-1]
    elif "://" in source:
        raise doc.error(where, f"{source!r}: only gs:// URIs or local folders")
    else:
        folder = (base / Path(source).expanduser()).resolve()
        if check_paths and not folder.is_dir():
            raise doc.error(where, f"dataset folder {folder} does not exist")
        source = str(folder)
        default = folder.name
    name = name if name is not None else default.lower()
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name) or name in BUILTIN_DATASETS:
        raise doc.error(where, f"dataset name {name!r}: lowercase letters, digits, '.', '_', '-' "
                               f"(not {', '.join(BUILTIN_DATASETS)}); give one with {{name: NAME, from: ...}}")
    return Dataset(name, source)


def _param(doc: _Doc, name, spec) -> Param:
    where = ("params", name)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise doc.error(where, "parameter names are lowercase identifiers like batch_size")
    if name in PATH_PLACEHOLDERS:
        raise doc.error(where, f"the name {name!r} is reserved (a path: {', '.join(PATH_PLACEHOLDERS)})")
    if not isinstance(spec, dict):  # shorthand: `epochs: 10`
        ptype = {bool: "bool", int: "int", float: "float"}.get(type(spec), "str")
        spec = {"type": ptype, "default": spec}
    for key in spec:
        if key not in PARAM_FIELDS:
            raise doc.error((*where, key), f"unknown field; allowed: {', '.join(PARAM_FIELDS)}")
    ptype = spec.get("type", "str")
    if ptype not in PARAM_TYPES:
        raise doc.error((*where, "type"), f"{ptype!r} is not a type; allowed: {', '.join(PARAM_TYPES)}")
    for key in ("min", "max"):
        if spec.get(key) is not None and (not isinstance(spec[key], (int, float)) or isinstance(spec[key], bool)):
            raise doc.error((*where, key), "a number")
    if ptype == "choice" and not spec.get("choices"):
        raise doc.error(where, "a choice parameter needs choices: [a, b]")
    if spec.get("choices") is not None and not isinstance(spec["choices"], list):
        raise doc.error((*where, "choices"), "a list like [a, b]")
    flag = spec.get("flag")
    if flag is not None and (not isinstance(flag, str) or not flag.startswith("-") or " " in flag):
        raise doc.error((*where, "flag"), "the option the program takes, like --epochs")
    requires = spec.get("requires") or {}
    if not isinstance(requires, dict):
        raise doc.error((*where, "requires"), "a mapping {other_param: value}")
    p = Param(name=name, type=ptype, default=spec.get("default"), help=str(spec.get("help", "") or ""), flag=flag,
              choices=tuple(spec.get("choices") or ()), min=spec.get("min"), max=spec.get("max"),
              pattern=spec.get("pattern"), requires=tuple(sorted(requires.items())),
              min_items=int(spec.get("min_items") or 0))
    d = p.default
    if d is not None:
        ok = {"int": isinstance(d, int) and not isinstance(d, bool), "bool": isinstance(d, bool),
              "float": isinstance(d, (int, float)) and not isinstance(d, bool),
              "choice": d in p.choices, "str": isinstance(d, str), "epoch-list": isinstance(d, str)}[ptype]
        if not ok:
            allowed = f"one of {', '.join(map(str, p.choices))}" if ptype == "choice" else f"a {ptype}"
            raise doc.error((*where, "default"), f"{d!r} is not {allowed}")
        if ptype in ("int", "float") and ((p.min is not None and d < p.min) or (p.max is not None and d > p.max)):
            raise doc.error((*where, "default"), f"{d!r} is outside {p.min}..{p.max}")
    return p


def default_name(path: Path) -> str:
    stem = path.stem if path.stem not in ("job", "ferry") else path.resolve().parent.name
    return re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40] or "job"


def load(path: Path, *, builtin: bool = False, check_paths: bool = True) -> Job:
    """Read and validate one job file -> Job; any problem is one UsageError naming file:line: field."""
    path = Path(path)
    shown = path
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"{shown}: cannot read the job file ({exc.strerror or exc.__class__.__name__})") from None
    doc = _Doc(shown, text)
    raw = doc.data
    if not isinstance(raw, dict):
        raise doc.error((), "a job file is a mapping with at least command: [argv ...]")
    for key in raw:
        if key not in FIELDS:
            hint = " (it lives under resources:)" if key in RESOURCE_FIELDS else ""
            raise doc.error((key,), f"unknown field{hint}; allowed: {', '.join(FIELDS)}")
    base = path.resolve().parent

    name = raw.get("name", None if builtin else default_name(path))
    if not isinstance(name, str) or not JOB_NAME.fullmatch(name):
        raise doc.error(("name",), f"{name!r}: lowercase letters, digits and '-', up to 40, starting with a letter or digit")
    if builtin and name != path.stem:
        raise doc.error(("name",), f"{name!r} differs from the file name {path.stem!r}")
    description = raw.get("description", "")
    if builtin and not description:
        raise doc.error(("description",), "a built-in job needs a description")
    if not isinstance(description, str):
        raise doc.error(("description",), "a line of text")

    workdir_raw = raw.get("workdir", ".")
    if not isinstance(workdir_raw, str) or not workdir_raw:
        raise doc.error(("workdir",), "a folder, relative to the job file's folder (default: it)")
    workdir = (base / Path(workdir_raw).expanduser()).resolve()
    if check_paths and not workdir.is_dir():
        raise doc.error(("workdir",), f"{workdir} is not a folder")

    if "command" not in raw:
        raise doc.error((), "missing command: an argv list like [python3, train.py, --out, '{out}'], or {shell: '...'}")
    command = _argv(doc, ("command",), raw["command"], "command")

    setup_raw = raw.get("setup") or []
    if not isinstance(setup_raw, list):
        raise doc.error(("setup",), "a list of commands, each an argv list or {shell: '...'}")
    setup = tuple(_argv(doc, ("setup", i), s, "a setup command") for i, s in enumerate(setup_raw))

    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise doc.error(("env",), "a mapping NAME: value")
    for k, v in env.items():
        if not isinstance(k, str) or not ENV_NAME.fullmatch(k):
            raise doc.error(("env", k), "variable names are letters, digits and _, not starting with a digit")
        if k in RESERVED_ENV or k.startswith("FERRY_"):
            raise doc.error(("env", k), f"{k} is set by ferry; choose another name")
        if not (_scalar(v) or isinstance(v, bool)):
            raise doc.error(("env", k), "a plain value (string, number or bool)")
    env = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in env.items()}

    secrets = raw.get("secrets") or []
    if not isinstance(secrets, list):
        raise doc.error(("secrets",), "a list of local environment variable names, like [WANDB_API_KEY]")
    for i, s in enumerate(secrets):
        if not isinstance(s, str) or not ENV_NAME.fullmatch(s):
            raise doc.error(("secrets", i), "an environment variable name, like WANDB_API_KEY")
        if s in env:
            raise doc.error(("secrets", i), f"{s} is also in env: a variable is either plain or secret")
        if s in RESERVED_ENV or s.startswith("FERRY_"):
            raise doc.error(("secrets", i), f"{s} is set by ferry; choose another name")

    ds_raw = raw.get("datasets") or []
    if not isinstance(ds_raw, list):
        raise doc.error(("datasets",), f"a list: built-in names ({', '.join(BUILTIN_DATASETS)}), local folders, gs:// prefixes")
    sources = tuple(_dataset(doc, ("datasets", i), d, base, check_paths) for i, d in enumerate(ds_raw))
    names = [d.name for d in sources]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise doc.error(("datasets", names.index(dup, names.index(dup) + 1)), f"two datasets named {dup!r}")

    outputs_raw = raw.get("outputs") or []
    if not isinstance(outputs_raw, list):
        raise doc.error(("outputs",), "a list of globs relative to the workdir")
    outputs = tuple(_relative_glob(doc, ("outputs", i), o) for i, o in enumerate(outputs_raw))

    res = raw.get("resources") or {}
    if not isinstance(res, dict):
        raise doc.error(("resources",), f"a mapping with {', '.join(RESOURCE_FIELDS)}")
    for key in res:
        if key not in RESOURCE_FIELDS:
            raise doc.error(("resources", key), f"unknown field; allowed: {', '.join(RESOURCE_FIELDS)}")
    template = res.get("template", "default")
    if not isinstance(template, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", template):
        raise doc.error(("resources", "template"), "a template name (infra/templates/*.yaml)")
    from infra import templates as _templates

    if template not in _templates.names():
        raise doc.error(("resources", "template"), f"{template!r} is not a template; allowed: {', '.join(_templates.names())}")
    gpu = res.get("gpu")
    if gpu is not None:
        gpu = str(gpu)
        try:
            if gpu.strip().lower() != "none":
                from infra import catalog as gpus

                gpus.parse_gpu_spec(gpu)
        except UsageError as exc:
            raise doc.error(("resources", "gpu"), str(exc)) from None
    spot = res.get("spot")
    if spot is not None and not isinstance(spot, bool):
        raise doc.error(("resources", "spot"), "true or false")
    max_hours = res.get("max_hours")
    if max_hours is not None and (isinstance(max_hours, bool) or not isinstance(max_hours, (int, float))
                                  or not 0 < max_hours <= 24 * 7):
        raise doc.error(("resources", "max_hours"), "a number of hours above 0, at most 168")

    resume = raw.get("resume")
    if resume is not None and (not isinstance(resume, str) or not resume.startswith("-") or " " in resume):
        raise doc.error(("resume",), "the job's flag for a checkpoints folder, e.g. --resume")

    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise doc.error(("params",), "a mapping name: {type, default, ...}")
    params = {n: _param(doc, n, spec) for n, spec in params_raw.items()}
    for n, p in params.items():
        for other, _ in p.requires:
            if other not in params:
                raise doc.error(("params", n, "requires"), f"{other!r} is not a parameter of this job")
    _check_placeholders(doc, command, setup, params)
    if command.shell:
        for n, p in params.items():
            if p.flag:
                raise doc.error(("params", n, "flag"), f"a shell: command takes parameters as {{{n}}} in its "
                                                        "script, not as flags")

    if command.shell:
        argv = ("bash", "-c", command.argv[0], name)
    else:
        argv = command.argv
    return Job(name=name, description=" ".join(description.split()), command=argv, datasets=tuple(names),
               template=template, params=params, path=path.resolve(), resume=resume, workdir=workdir,
               shell=command.shell, setup=setup, env=env, secrets=tuple(secrets), sources=sources, outputs=outputs,
               gpu=gpu, spot=spot, max_hours=float(max_hours) if max_hours is not None else None, builtin=builtin)


_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _check_placeholders(doc: _Doc, command: Command, setup: tuple, params: dict) -> None:
    known = set(params) | set(PATH_PLACEHOLDERS)
    for i, a in enumerate(command.argv):
        for m in _PLACEHOLDER.finditer(a):
            if m.group(1) not in known:
                where = ("command", "shell") if command.shell else ("command", i)
                raise doc.error(where, f"{{{m.group(1)}}} is neither a parameter nor one of "
                                       f"{', '.join('{' + p + '}' for p in PATH_PLACEHOLDERS)}")


def looks_like_path(text: str) -> bool:
    return "/" in text or text.endswith(JOB_FILE_SUFFIXES) or text.startswith(".")


# --------------------------------------------------------------------------- scaffolding (`init`)
EXAMPLE = """\
# A ferry job file: `python cli.py run job.yaml` (add --dry-run to see everything first).
# The whole schema: docs/byo-job.md. Every field but `command` is optional.
name: {name}
description: my own training script on a GPU VM

# The folder synced to the VM (relative to this file), by content hash; .ferryignore there
# leaves files out. On the VM it is ferry/code/work/ and the job runs in it; ferry's own
# trainer/ package is importable too (from trainer.datasets import mnist).
workdir: .

# Run once per VM and code version (cached: a second run on the same VM skips them).
# Each is an argv list; {{shell: '...'}} runs a line with bash.
setup:
  - [python3, -m, pip, install, --quiet, -r, requirements.txt]

# The job: an argv list, never a shell line ({{shell: '...'}} is the explicit bash form).
# {{out}}: the run's output folder (uploaded as artifacts), {{data}}: the datasets folder,
# {{run_id}}, and any parameter below by name.
command: [python3, train.py, --out, '{{out}}', --data-dir, '{{data}}']

env:                      # plain variables (recorded in the run's manifest)
  MPLBACKEND: Agg
secrets: []               # names of local environment variables, e.g. [WANDB_API_KEY]:
                          # their values go to the job over SSH only, never to the bucket

datasets: []              # built-in: mnist, 15scene; or a folder (./data) or gs://bucket/prefix
outputs: []               # globs in the workdir, uploaded when the job ends, e.g. ['model/*.npz']

resources:
  template: default       # infra/templates/*.yaml (default: one T4)
  # gpu: t4               # or l4, a100, t4:2 ...
  spot: false
  max_hours: 2            # the cloud deletes the VM after this, whatever happens

params:                   # typed: --set epochs=20 is checked before anything is created
  epochs: {{type: int, default: 10, min: 1, max: 1000, flag: --epochs, help: passes over the data}}
  lr: {{type: float, default: 0.1, min: 0.000001, max: 10, flag: --lr, help: learning rate}}
"""

IGNORE_EXAMPLE = """\
# Left out of the sync to the VM (gitignore-style: `dir/` a folder anywhere, `*.x` a name).
__pycache__/
*.pyc
.venv/
.git/
runs/
data/
*.ckpt
"""
