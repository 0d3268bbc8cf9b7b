"""The registry: YAML files under benchmarks/ loaded into typed, frozen specs.

Data only: this module imports neither torch nor any model code, so `sdd ls`, `sdd validate` and
`sdd plan` start fast. Every error names the file, the line, the key, what was expected and, for
misspelled names, the closest valid one.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from harness import kinds
from harness.archnames import ALIAS_NAMES, unknown_arch
from harness.errors import HarnessError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BENCHMARKS = ROOT / "benchmarks"

# Architectures: the seed methods' aliases or any timm model name (harness.archnames checks them without
# importing torch or timm; harness.models.archs builds them).
ARCHS = ALIAS_NAMES
FAMILIES = (
    "self-distillation",
    "contrastive",
    "dense-contrastive",
    "masked-modelling",
    "clustering",
    "redundancy-reduction",
    "non-contrastive",
    "test",
)
DATASET_KINDS = tuple(kinds.DATASET_KINDS)
STATE_DICT_CONVERTERS = ("timm", "timm_swin", "split_cls_tokens")


class RegistryError(HarnessError):
    """A registry file is wrong; the message says where, what and how to fix it."""


# --------------------------------------------------------------------------------------------
# Specs. `extra="forbid"` turns every misspelled key into an error; `frozen=True` makes specs
# hashable values that no job can mutate.


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EpochRange(Spec):
    start: int = Field(ge=0)
    stop: int = Field(ge=0, description="inclusive")
    step: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.stop < self.start:
            raise ValueError(f"stop ({self.stop}) is smaller than start ({self.start}); use start <= stop")
        return self

    def expand(self) -> tuple[int, ...]:
        return tuple(range(self.start, self.stop + 1, self.step))


class StateDictRule(Spec):
    """How to turn a checkpoint file into the backbone's state dict (applied in this order)."""

    key: str | tuple[str, ...] | None = Field(
        default=None, description="nested key holding the weights, dotted ('a.b'); a list = first one present"
    )
    key_optional: bool = Field(default=False, description="use the whole file when no `key` is present")
    keep_prefix: str | None = Field(default=None, description="keep only keys starting with this (then stripped)")
    drop_containing: tuple[str, ...] = Field(default=(), description="drop keys containing any of these")
    strip_prefixes: tuple[str, ...] = Field(default=(), description="prefixes removed (each once, in order)")
    rename_prefixes: dict[str, str] = Field(default_factory=dict, description="key prefix renames, applied last")
    convert: Literal[STATE_DICT_CONVERTERS] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="a converter to the model's layout: timm (the checkpoint_filter_fn of the timm module that "
        "defines the architecture: DINOv2/DINOv3 release files, EVA, OpenCLIP...), timm_swin (original Swin -> timm), "
        "split_cls_tokens (UDI's [1,2,d] cls_token -> timm cls + register token)",
    )

    def __hash__(self):  # dict fields are not hashable by default
        return hash(self.model_dump_json())


class CheckpointSpec(Spec):
    dir: str = Field(description="directory; ${VAR} and ${VAR:-default} are expanded when used")
    file: str = Field(
        description="file-name template with {epoch} (format spec allowed: {epoch:04d}); a released file's own name "
        "(no {epoch}) when `epochs` has one entry"
    )
    epochs: EpochRange | tuple[int, ...]
    file_offset: int = Field(default=0, description="number in the file name = completed epochs + file_offset")
    epoch_key: str | None = Field(default="epoch", description="dotted key of the epoch stored in the file")
    epoch_key_offset: int = Field(default=0, description="completed epochs = stored value + epoch_key_offset")
    epoch_tolerance: int = Field(default=0, ge=0, description="allowed |stored - expected| before refusing")
    state_dict: StateDictRule = Field(default_factory=StateDictRule)

    @field_validator("file")
    @classmethod
    def _has_epoch(cls, v: str) -> str:
        if "{" not in v and "}" not in v:  # a released file, one epoch (checked with `epochs` below)
            return v
        if not re.search(r"\{epoch(:[^}]*)?\}", v):
            raise ValueError("must contain the placeholder {epoch}, e.g. 'checkpoint{epoch:04d}.pth'")
        try:
            v.format(epoch=1)
        except (ValueError, KeyError, IndexError) as e:
            raise ValueError(f"is not a valid Python format template ({e}); only {{epoch}} may be used") from None
        return v

    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs_shape(cls, v):
        if isinstance(v, dict):
            return v
        if isinstance(v, (list, tuple)):
            bad = [f"item {i}: {x!r}" for i, x in enumerate(v) if isinstance(x, bool) or not isinstance(x, int)]
            if bad:
                raise ValueError(f"epochs must be integers ({'; '.join(bad)})")
            return tuple(v)
        raise ValueError("expected a list of epochs like [10, 20, 30] or a range like {start: 10, stop: 800, step: 10}")

    @field_validator("epochs")
    @classmethod
    def _epochs_nonempty(cls, v):
        eps = v.expand() if isinstance(v, EpochRange) else tuple(v)
        if not eps:
            raise ValueError("no epochs: give a non-empty list or a start/stop/step range")
        if any(e < 0 for e in eps):
            raise ValueError("epochs must be >= 0")
        if len(set(eps)) != len(eps) or list(eps) != sorted(eps):
            raise ValueError("epochs must be strictly increasing without duplicates")
        return v

    @model_validator(mode="after")
    def _one_file_one_epoch(self):
        if not self.per_epoch and len(self.epoch_list()) != 1:
            raise ValueError(
                f"file '{self.file}' has no {{epoch}} placeholder, so it names one file (a released checkpoint), but "
                f"epochs lists {len(self.epoch_list())}: give one epoch (e.g. epochs: [100], the release's training "
                f"length) or a template with {{epoch}}"
            )
        return self

    @property
    def per_epoch(self) -> bool:
        """False for a released file: one name, one epoch."""
        return "{" in self.file

    def epoch_list(self) -> tuple[int, ...]:
        return self.epochs.expand() if isinstance(self.epochs, EpochRange) else tuple(self.epochs)

    def file_name(self, epoch: int) -> str:
        return self.file.format(epoch=epoch + self.file_offset) if self.per_epoch else self.file


class PublishedNumber(Spec):
    """A number the method's own paper or release publishes for one of the harness's protocols, shown beside
    ours in the `published` table. `value` is on the harness's scale for the metric (J&F as a fraction)."""

    protocol: str
    metric: str
    value: float
    dataset: str | None = Field(default=None, description="default: the protocol's only dataset")
    source: str = Field(
        min_length=8, description="where the number is written: repo @ commit, path, line (or paper table)"
    )
    note: str = Field(default="", description="how the published setting differs from the protocol's")


class MethodSpec(Spec):
    name: str
    title: str
    family: Literal[FAMILIES]  # type: ignore[valid-type]
    arch: str = Field(description="an alias (`sdd ls archs`) or any timm model name")
    arch_kwargs: dict[str, Any] = Field(default_factory=dict, description="arguments of timm.create_model")
    checkpoint: CheckpointSpec
    tokens: str = Field(
        default="last block + final norm, class tokens dropped",
        description="what the dense features are (documentation)",
    )
    paper: dict[str, Any] = Field(default_factory=dict, description="references; the SDD paper's numbers")
    published: tuple[PublishedNumber, ...] = Field(
        default=(), description="the method's own published numbers for harness protocols (the `published` table)"
    )
    projection_head: str | None = Field(
        default=None,
        description="the first linear layer of the method's projection head in its checkpoint, under the "
        "state-dict key (DINO's, iBOT's DINOHead: head.mlp.0): what low-shot fine-tuning starts from (UDI's "
        "--finetune_head_layer 1); hashed only into the cells of the kinds that read it",
    )
    notes: str = ""
    source: str = Field(default="", exclude=True)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        problem = unknown_arch(v)
        if problem:
            raise ValueError(problem)
        return v

    def __hash__(self):
        return hash(self.model_dump_json())

    def epochs(self) -> tuple[int, ...]:
        return self.checkpoint.epoch_list()

    def checkpoint_file(self, epoch: int) -> Path:
        """Where the checkpoint of `epoch` is (${VAR} expanded now; a relative dir is under the repository)."""
        directory = resolve_path(self.checkpoint.dir, source=self.source, key="checkpoint.dir")
        return directory / self.checkpoint.file_name(epoch)


class SplitSpec(Spec):
    img_dir: str
    ann_dir: str | None = None
    split_file: str | None = None
    ann_file: str | None = None
    files: tuple[str, ...] = Field(
        default=(),
        description="for datasets stored as a few files (CIFAR's pickled batches): their names under img_dir",
    )
    # a check, not an input: left out of the cell's config (as `notes` is), so that giving it changes no config
    # hash and a dataset file without it dumps as it did before the field existed
    images: int | None = Field(
        default=None, ge=1, exclude=True, description="the released split's number of images; checked when given"
    )


class SegmentationLayout(Spec):
    """How the segmentation protocols read a dataset, as mmseg's own dataset config for it does
    (`configs/_base_/datasets/<dataset>.py`): the training crop, the scale images are resized to (then
    jittered by the protocol's ratio range), and the sliding window of a slide evaluation. A protocol
    may override crop and scale (the mini world's tiny crops)."""

    crop_size: tuple[int, int] = (512, 512)
    train_scale: tuple[int, int] = (2048, 512)
    slide_crop: tuple[int, int] | None = Field(default=None, description="default: crop_size")
    slide_stride: tuple[int, int] | None = Field(default=None, description="default: 2/3 of the window (341 of 512)")


class DatasetSpec(Spec):
    name: str
    title: str
    kind: Literal[DATASET_KINDS]  # type: ignore[valid-type]
    root: str = Field(description="${VAR} and ${VAR:-default} are expanded when used")
    task: Literal[
        "classification", "semantic_segmentation", "instance_segmentation", "video_segmentation", "depth_estimation"
    ]
    num_classes: int | None = Field(default=None, ge=1)
    ignore_index: int = 255
    reduce_zero_label: bool = False
    img_suffix: str = ".jpg"
    seg_map_suffix: str = ".png"
    splits: dict[str, SplitSpec]
    mmseg_dataset: str | None = None
    segmentation: SegmentationLayout = Field(default_factory=SegmentationLayout)
    notes: str = ""
    source: str = Field(default="", exclude=True)

    def __hash__(self):
        return hash(self.model_dump_json())


class Resources(Spec):
    gpus: int = Field(default=1, ge=0, description="GPUs per cell, one process each; 0 = the CPU")
    processes: int | None = Field(
        default=None,
        ge=1,
        description="processes per cell on the CPU (gpus: 0), a gloo world of this size; with GPUs, gpus decides",
    )
    cpus: int = Field(default=8, ge=1, description="CPU cores per cell (shared by its processes)")
    mem_gb: int = Field(default=32, ge=1, description="memory per cell")
    time_min: int = Field(default=60, ge=1)
    gpu_hours: float = Field(ge=0, description="estimated GPU·h per cell (for `sdd plan`)")
    train_s_per_image: float | None = Field(
        default=None,
        gt=0,
        description="GPU seconds to train on one image (forward and backward, an assumption the file states): "
        "`sdd plan` then prices a cell from its recipe, epochs x (train images + val images / 3) x this, where "
        "the dataset file states its splits' sizes; else gpu_hours",
    )

    @model_validator(mode="after")
    def _one_process_per_gpu(self):
        if self.gpus and self.processes not in (None, self.gpus):
            raise ValueError(
                f"processes ({self.processes}) must equal gpus ({self.gpus}) or be left out: "
                f"a GPU cell runs one process per GPU"
            )
        return self

    @property
    def world_size(self) -> int:
        """Processes of one cell as the recipe plans it."""
        return self.gpus or self.processes or 1


class RecipeSource(Spec):
    """Where a recipe comes from: the config or script it follows (repository, commit, path) and the paper."""

    repo: str
    commit: str = Field(pattern=r"^[0-9a-f]{7,40}$")
    path: str
    paper: str = Field(description="the paper and section that describe it")
    also: tuple[str, ...] = Field(default=(), description="further files it reads (e.g. its _base_ configs)")


class Deviation(Spec):
    """One way the harness's recipe differs from its source, why, and the effect (measured or argued)."""

    field: str = Field(description="the recipe field (as in tests/golden/recipes/), or 'structure'")
    what: str
    why: str
    effect: str


class Recipe(Spec):
    follows: RecipeSource
    deviations: tuple[Deviation, ...] = ()


class ProtocolSpec(Spec):
    name: str
    kind: str = Field(description="a protocol kind registered in harness/kinds.py")
    title: str
    params: dict[str, Any] = Field(default_factory=dict)
    resources: Resources
    datasets: tuple[str, ...] = Field(default=(), description="datasets this protocol accepts (empty = any)")
    recipe: Recipe | None = Field(
        default=None,
        description="the source it follows and its deviations (documentation: not part of a cell's identity)",
    )
    miniature_of: str | None = Field(
        default=None, description="the protocol this one scales down for the mini world (it has the source)"
    )
    notes: str = ""
    source: str = Field(default="", exclude=True)

    def __hash__(self):
        return hash(self.model_dump_json())

    def source_line(self) -> str:
        """Where the recipe comes from, in one line: repo@commit:path, the protocol it scales down, or none."""
        if self.recipe is not None:
            f = self.recipe.follows
            return f"{f.repo}@{f.commit[:7]}:{f.path}"
        return f"miniature of {self.miniature_of}" if self.miniature_of else "none (not a published recipe)"

    @field_validator("kind")
    @classmethod
    def _registered(cls, v: str) -> str:  # read when a file is loaded: a kind added at run time counts
        if v not in kinds.PROTOCOL_KINDS:
            raise ValueError(
                f"unknown protocol kind {v!r}; expected one of {', '.join(kinds.PROTOCOL_KINDS)} "
                f"(harness/kinds.py){did_you_mean(v, kinds.PROTOCOL_KINDS)}"
            )
        return v


class SuiteEntry(Spec):
    protocol: str
    datasets: tuple[str, ...]
    methods: tuple[str, ...] | Literal["all"] = "all"
    epochs: Literal["all", "last"] | tuple[int, ...] = "all"

    # An explicit epoch list gets the checks a method file's list has: integers (a YAML `true` is not epoch
    # 1, nor "20" epoch 20), at least one (an empty list would drop the protocol from the suite), none below
    # 0, strictly increasing without duplicates (a repeated epoch would plan and run its cell twice). Whether
    # each method has those epochs is checked against the method files (`_check_suite`).
    @field_validator("epochs", mode="before")
    @classmethod
    def _epochs_shape(cls, v):
        if isinstance(v, str):
            return v  # `all` or `last`; anything else is named by the literal's own message
        if isinstance(v, (list, tuple)):
            bad = [f"item {i}: {x!r}" for i, x in enumerate(v) if isinstance(x, bool) or not isinstance(x, int)]
            if bad:
                raise ValueError(f"epochs must be integers ({'; '.join(bad)}); write e.g. [10, 20, 30]")
            if not v:
                raise ValueError(
                    "no epochs: an empty list would drop this protocol from the suite; give the epochs to run, "
                    "`all` or `last` (or remove the grid entry)"
                )
            if any(e < 0 for e in v):
                negative = [e for e in v if e < 0]
                raise ValueError(f"epochs must be >= 0 (epoch 0 is the initialisation); {negative} are not")
            twice = sorted({e for e in v if list(v).count(e) > 1})
            if twice:
                raise ValueError(
                    f"epochs {twice} listed twice: each would plan and run its cell again; write {sorted(set(v))}"
                )
            if list(v) != sorted(v):
                raise ValueError(f"epochs must be strictly increasing without duplicates; write {sorted(v)}")
            return tuple(v)
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"a single epoch must be a list: write [{v}]")
        raise ValueError("expected `all`, `last` or a list of epochs like [10, 20, 30]")


class SuiteSpec(Spec):
    name: str
    title: str
    methods: tuple[str, ...]
    grid: tuple[SuiteEntry, ...] = Field(min_length=1)
    # Where this suite's datasets live, in place of $SDD_DATA_ROOT in the dataset files' roots (e.g. the
    # mini world's generated data); unset: $SDD_DATA_ROOT as usual.
    data_root: str | None = None
    notes: str = ""
    source: str = Field(default="", exclude=True)


KINDS = {"methods": MethodSpec, "datasets": DatasetSpec, "protocols": ProtocolSpec, "suites": SuiteSpec}


# --------------------------------------------------------------------------------------------
# YAML with line numbers, and pydantic errors turned into one readable message.


def _line_map(text: str) -> dict[tuple, int]:
    """(key, path, ...) -> 1-based line of that key (or list item) in the YAML text."""
    lines: dict[tuple, int] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (k.value,)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return lines
    if root is not None:
        walk(root, ())
    return lines


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names allowed at `loc` (the parent mapping of an unknown key)."""
    cur: Any = model
    for part in loc:
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return []
        f = cur.model_fields.get(part)
        if f is None:
            return []
        cur = _first_model(f.annotation)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return [n for n, f in cur.model_fields.items() if not f.exclude]
    return []


def _first_model(tp):
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for a in getattr(tp, "__args__", ()) or ():
        m = _first_model(a)
        if m is not None:
            return m
    return None


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _format_validation(
    err: ValidationError, model: type[BaseModel], path: Path, lines: dict, prefix: tuple = ()
) -> str:
    """One line per error: file:line: key: what is wrong (and the keys allowed there, "did you mean").
    `prefix` places a nested model's errors (a protocol's `params`) in the file."""
    out = []
    for e in err.errors():
        loc = prefix + tuple(p for p in e["loc"] if not _is_union_tag(p))
        line = None
        for n in range(len(loc), -1, -1):
            if loc[:n] in lines:
                line = lines[loc[:n]]
                break
        where = f"{path}:{line}" if line else str(path)
        key = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc[len(prefix) : -1])
            msg = f"unknown key '{loc[-1]}'; expected one of: {', '.join(allowed)}.{did_you_mean(loc[-1], allowed)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        elif e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected", "")
            choices = re.findall(r"'([^']*)'", expected)
            msg = f"got {e['input']!r}; expected one of: {', '.join(choices)}.{did_you_mean(e['input'], choices)}"
        elif e["type"] == "value_error" and str(e["msg"]).startswith("Value error, unknown architecture"):
            msg = str(e["msg"])[len("Value error, ") :]  # the message names the value and the closest names
        else:
            msg = f"{e['msg']} (got {e['input']!r})" if not isinstance(e["input"], dict) else e["msg"]
        out.append(f"{where}: {key}: {msg}")
    # the same location may be reported once per union branch; keep the first of each
    seen, uniq = set(), []
    for o in out:
        k = o.split(": ")[0] + o.split(": ")[1]
        if k not in seen:
            seen.add(k)
            uniq.append(o)
    return "\n".join(uniq)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "none", "literal"}


def _is_union_tag(part) -> bool:
    """pydantic puts the union branch it tried into an error's loc ('EpochRange', 'list[str]')."""
    if not isinstance(part, str):
        return False
    return (
        "[" in part
        or part.lower() in _TYPE_TAGS
        or any(
            part == m.__name__
            for m in (*KINDS.values(), EpochRange, StateDictRule, CheckpointSpec, SplitSpec, Resources, SuiteEntry)
        )
    )


def load_spec(path: Path, kind: str):
    """Parse and validate one registry file of the given kind ('methods', 'datasets', ...)."""
    return load_spec_model(path, KINDS[kind])


# A name is a folder of the results tree (results/<suite>/runs/<protocol>/<dataset>/<method>/): one path
# segment, never "." or "..", which would write outside the results root or merge two cells' records.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_REGISTRY_FILE = 1 << 20  # bytes: a registry file is a page of YAML


class _BoundedLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: registry files are small and spell every value out, and nested
    aliases make a few hundred bytes expand exponentially. Refused in the same pass that parses."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                "YAML anchors and aliases (&name, *name) are not allowed in registry files; write the values out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def load_spec_model(path: Path, model: type[BaseModel]):
    """Parse one YAML file into `model`, with file:line errors."""
    path = Path(path)
    if not NAME.match(path.stem) or path.stem in (".", ".."):
        raise RegistryError(
            f"{path}: '{path.stem}' cannot be a name (it becomes a folder of the results tree): use "
            f"letters, digits, '_', '-' and '.', starting with a letter or digit"
        )
    try:
        text = path.read_text()
    except OSError as e:
        raise RegistryError(f"{path}: cannot read registry file: {e.strerror}") from None
    if len(text) > MAX_REGISTRY_FILE:
        raise RegistryError(f"{path}: {len(text):,} bytes; a registry file is at most {MAX_REGISTRY_FILE:,}")
    try:
        data = yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RegistryError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{path}: expected a mapping of keys (name: ..., ...), got {type(data).__name__}")
    if data.get("name") is not None and data.get("name") != path.stem:
        raise RegistryError(
            f"{path}:{_line_map(text).get(('name',), 1)}: name: '{data.get('name')}' does not match the file "
            f"name; rename the file to {data.get('name')}.yaml or set name: {path.stem}"
        )
    try:
        spec = model.model_validate({**data, "source": str(path)})
    except ValidationError as e:
        raise RegistryError(_format_validation(e, model, path, _line_map(text))) from None
    if isinstance(spec, ProtocolSpec):  # the kind's own parameter schema, defaults filled in
        schema = kinds.PROTOCOL_KINDS[spec.kind].params
        try:
            resolved = schema.model_validate(spec.params)
        except ValidationError as e:
            raise RegistryError(_format_validation(e, schema, path, _line_map(text), prefix=("params",))) from None
        spec = spec.model_copy(update={"params": resolved.model_dump(mode="json")})
    return spec


# --------------------------------------------------------------------------------------------
# Environment-variable expansion, deferred until a path is actually used.

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DATA_ROOT_VAR = "SDD_DATA_ROOT"


def _parse_var(value: str, start: int) -> tuple[str, str | None, int]:
    """At value[start] == "${": (name, default or None, index after the closing brace). The default may
    itself hold ${...} (nested defaults, e.g. ${SDD_MINI_ROOT:-${SDD_RESULTS:-results}/.mini})."""
    m = _NAME.match(value, start + 2)
    if not m:
        raise ValueError(f"'${{' at position {start} is not followed by a variable name")
    i = m.end()
    if value.startswith("}", i):
        return m.group(0), None, i + 1
    if not value.startswith(":-", i):
        raise ValueError(f"${{{m.group(0)} at position {start}: expected '}}' or ':-default}}'")
    depth, j = 0, i + 2
    while j < len(value):
        if value.startswith("${", j):
            depth, j = depth + 1, j + 2
            continue
        if value[j] == "}":
            if depth == 0:
                return m.group(0), value[i + 2 : j], j + 1
            depth -= 1
        j += 1
    raise ValueError(f"${{{m.group(0)}:-... at position {start} has no closing '}}'")


def expand_env(value: str, *, source: str = "", key: str = "") -> str:
    """${VAR} and ${VAR:-default} (defaults may nest) expanded from the environment."""
    try:
        return _expand_flat(value, lambda name: os.environ.get(name))
    except KeyError as e:
        name = e.args[0]
        raise RegistryError(
            f"{source}: {key}: environment variable {name} is not set (used in '{value}'); "
            f"export {name}=/path/to/... or write a default as ${{{name}:-/path}}"
        ) from None
    except ValueError as e:
        raise RegistryError(f"{source}: {key}: '{value}': {e}") from None


def _expand_flat(value: str, lookup) -> str:
    parts, i = [], 0
    while True:
        j = value.find("${", i)
        if j < 0:
            parts.append(value[i:])
            return "".join(parts)
        parts.append(value[i:j])
        name, default, i = _parse_var(value, j)
        got = lookup(name)
        if got is None:
            if default is None:
                raise KeyError(name)
            got = _expand_flat(default, lookup)
        parts.append(got)


def resolve_path(value: str, *, source: str = "", key: str = "") -> "Path":
    """${VAR} expanded; a relative path is relative to the repository (not to the current directory)."""
    path = Path(expand_env(value, source=source, key=key))
    return path if path.is_absolute() else ROOT / path


def env_vars(value: str, *, required_only: bool = False) -> list[str]:
    """The variables a value uses (nested defaults included); `required_only`: those without a default."""
    out, i = [], 0
    while True:
        j = value.find("${", i)
        if j < 0:
            return out
        try:
            name, default, i = _parse_var(value, j)
        except ValueError:
            return out
        if default is None or not required_only:
            out.append(name)
        if default is not None and not required_only:
            out += env_vars(default)


def rebase_data_root(root: str, data_root: str) -> str:
    """A dataset root written under ${SDD_DATA_ROOT...} moved under `data_root` (a suite's own data);
    any other root (an absolute path, another variable) is left as it is."""
    if not root.startswith("${" + DATA_ROOT_VAR):
        return root
    try:
        name, _, end = _parse_var(root, 0)
    except ValueError:
        return root
    return data_root + root[end:] if name == DATA_ROOT_VAR else root


# --------------------------------------------------------------------------------------------
# The registry: every file of every kind, cross-checked.


@dataclass(frozen=True)
class Registry:
    root: Path
    methods: dict[str, MethodSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    protocols: dict[str, ProtocolSpec] = field(default_factory=dict)
    suites: dict[str, SuiteSpec] = field(default_factory=dict)

    def get(self, kind: str, name: str):
        table = getattr(self, kind)
        if name not in table:
            singular = kind[:-1]
            raise RegistryError(
                f"unknown {singular} '{name}'.{did_you_mean(name, table)} "
                f"Known: {', '.join(sorted(table)) or '(none)'} (files under {self.root / kind})"
            )
        return table[name]

    def method(self, name: str) -> MethodSpec:
        return self.get("methods", name)

    def dataset(self, name: str, suite: str | None = None) -> DatasetSpec:
        """A dataset as a suite reads it: under the suite's `data_root` when it declares one."""
        spec = self.get("datasets", name)
        data_root = self.suites[suite].data_root if suite in self.suites else None
        if data_root:  # another copy of the data (the mini world's): the released splits' sizes do not apply
            splits = {k: v.model_copy(update={"images": None}) for k, v in spec.splits.items()}
            spec = spec.model_copy(update={"root": rebase_data_root(spec.root, data_root), "splits": splits})
        return spec

    def protocol(self, name: str) -> ProtocolSpec:
        return self.get("protocols", name)

    def suite(self, name: str) -> SuiteSpec:
        return self.get("suites", name)


def _check_suite(reg: Registry, s: SuiteSpec, broken: dict[str, set] | None = None) -> list[str]:
    errs = []
    lines = _line_map(Path(s.source).read_text()) if s.source else {}
    broken = broken or {}

    def ref(kind, name, loc):
        table = getattr(reg, kind)
        if name in broken.get(kind, set()):
            return  # its own file's error is reported above; "unknown" would be wrong
        if name not in table:
            line = lines.get(loc) or lines.get(loc[:-1])
            errs.append(
                f"{s.source}:{line}: {'.'.join(map(str, loc))}: unknown {kind[:-1]} '{name}'; "
                f"expected one of the files in {reg.root / kind}.{did_you_mean(name, table)}"
            )

    def once(values, loc, what):
        seen = {}
        for i, v in enumerate(values):
            if v in seen:
                errs.append(
                    f"{s.source}:{lines.get(loc + (i,)) or lines.get(loc)}: {'.'.join(map(str, loc))}.{i}: "
                    f"{what} '{v}' is listed twice (also at {seen[v]}); each would run the same cells again"
                )
            seen.setdefault(v, i)

    once(s.methods, ("methods",), "method")
    for i, m in enumerate(s.methods):
        ref("methods", m, ("methods", i))
    claimed: dict[tuple, int] = {}  # (protocol, dataset, method) -> the grid entry that runs it
    for gi, entry in enumerate(s.grid):
        once(entry.datasets, ("grid", gi, "datasets"), "dataset")
        if entry.methods != "all":
            once(entry.methods, ("grid", gi, "methods"), "method")
        for d in entry.datasets:
            for m in s.methods if entry.methods == "all" else entry.methods:
                other = claimed.setdefault((entry.protocol, d, m), gi)
                if other != gi:
                    errs.append(
                        f"{s.source}:{lines.get(('grid', gi)) or lines.get(('grid', gi, 'protocol'))}: grid.{gi}: "
                        f"{entry.protocol} on {d} for {m} is already in grid.{other}; one entry per protocol, "
                        f"dataset and method (merge their epochs)"
                    )
                    break
    for gi, entry in enumerate(s.grid):
        ref("protocols", entry.protocol, ("grid", gi, "protocol"))
        for di, d in enumerate(entry.datasets):
            ref("datasets", d, ("grid", gi, "datasets", di))
            p = reg.protocols.get(entry.protocol)
            if p and p.datasets and d in reg.datasets and d not in p.datasets:
                errs.append(
                    f"{s.source}:{lines.get(('grid', gi, 'datasets', di))}: grid.{gi}.datasets: "
                    f"protocol '{p.name}' does not accept dataset '{d}'; expected one of: "
                    f"{', '.join(p.datasets)}"
                )
        if not isinstance(entry.epochs, str):  # an explicit list: every method must have those checkpoints
            for m in s.methods if entry.methods == "all" else entry.methods:
                spec = reg.methods.get(m)
                absent = sorted(set(entry.epochs) - set(spec.epochs())) if spec else []
                if absent:
                    eps = spec.epochs()
                    errs.append(
                        f"{s.source}:{lines.get(('grid', gi, 'epochs')) or lines.get(('grid', gi))}: "
                        f"grid.{gi}.epochs: method '{m}' has no checkpoint for epochs {absent} (its epochs: "
                        f"{eps[0]}..{eps[-1]}, {len(eps)} in all, in {spec.source}); use `epochs: all`, "
                        f"`last`, or epochs it has"
                    )
        if entry.methods != "all":
            for mi, m in enumerate(entry.methods):
                ref("methods", m, ("grid", gi, "methods", mi))
                if m in reg.methods and m not in s.methods:
                    errs.append(
                        f"{s.source}:{lines.get(('grid', gi, 'methods', mi))}: grid.{gi}.methods: "
                        f"'{m}' is not in the suite's methods list; add it there first"
                    )
    return errs


def _check_published(reg: Registry, m: MethodSpec) -> list[str]:
    """Each published number names a protocol, a metric of its kind and one of its datasets."""
    lines = _line_map(Path(m.source).read_text()) if m.source and m.published else {}
    problems = []
    for i, n in enumerate(m.published):
        at = f"{m.source}:{lines.get(('published', i))}: published.{i}"
        p = reg.protocols.get(n.protocol)
        if p is None:
            problems.append(f"{at}.protocol: unknown protocol '{n.protocol}'.{did_you_mean(n.protocol, reg.protocols)}")
            continue
        names = [x.name for x in kinds.PROTOCOL_KINDS[p.kind].metrics]
        if n.metric not in names:
            problems.append(
                f"{at}.metric: '{n.metric}' is not a metric of {p.kind} protocols (expected one of: "
                f"{', '.join(names)}).{did_you_mean(n.metric, names)}"
            )
        if n.dataset is not None and n.dataset not in p.datasets:
            problems.append(f"{at}.dataset: protocol '{p.name}' runs on {list(p.datasets)}, not '{n.dataset}'")
        elif n.dataset is None and len(p.datasets) != 1:
            problems.append(f"{at}.dataset: protocol '{p.name}' runs on {list(p.datasets)}: name the dataset")
    return problems


def _check_protocol(reg: Registry, p: ProtocolSpec) -> list[str]:
    lines = _line_map(Path(p.source).read_text()) if p.source else {}
    problems = [
        f"{p.source}:{lines.get(('datasets', i))}: datasets.{i}: unknown dataset '{d}'.{did_you_mean(d, reg.datasets)}"
        for i, d in enumerate(p.datasets)
        if d not in reg.datasets
    ]
    big = reg.protocols.get(p.miniature_of or "")
    if p.miniature_of and big is None:
        problems.append(
            f"{p.source}:{lines.get(('miniature_of',))}: miniature_of: unknown protocol '{p.miniature_of}'."
            f"{did_you_mean(p.miniature_of, reg.protocols)}"
        )
    elif big is not None and big.kind != p.kind:
        problems.append(
            f"{p.source}:{lines.get(('miniature_of',))}: miniature_of: '{big.name}' is a {big.kind} protocol, "
            f"this one is {p.kind}: a miniature runs the same kind"
        )
    return problems


_LOADED: dict[str, tuple[tuple, "Registry"]] = {}  # root -> (its files' stat, the registry), per process


def _files_signature(root: Path) -> tuple:
    """Every registry file's name and the digest of its bytes (reading 50 small files costs far less than
    parsing their YAML; a modification time could miss an edit made within the same clock tick)."""
    import hashlib

    out = []
    for kind in KINDS:
        for path in sorted((root / kind).glob("*.yaml")):
            try:
                out.append((str(path), hashlib.sha256(path.read_bytes()).hexdigest()))
            except OSError:
                out.append((str(path), None))
    return tuple(out)


def load_registry(root: Path | str | None = None) -> Registry:
    """Load and cross-check every registry file; raise one RegistryError listing every problem. A process
    that loads the same, unchanged registry again (each cell of a worker, each mmseg backbone) gets the
    one it loaded: the files' bytes are compared, their YAML is not parsed again."""
    root = Path(root or os.environ.get("SDD_BENCHMARKS") or DEFAULT_BENCHMARKS)
    if not root.is_dir():
        raise RegistryError(f"registry directory {root} does not exist (set SDD_BENCHMARKS or pass --registry)")
    signature = _files_signature(root)
    held = _LOADED.get(str(root.resolve()))
    if held is not None and held[0] == signature:
        return held[1]
    reg = _load_registry(root)
    _LOADED[str(root.resolve())] = (signature, reg)
    return reg


def _load_registry(root: Path) -> Registry:
    tables: dict[str, dict] = {k: {} for k in KINDS}
    errors: list[str] = []
    broken: dict[str, set] = {k: set() for k in KINDS}  # files that did not load, by their file name
    for kind in KINDS:
        for path in sorted((root / kind).glob("*.yaml")):
            try:
                spec = load_spec(path, kind)
            except RegistryError as e:
                errors.append(str(e))
                broken[kind].add(path.stem)
                continue
            tables[kind][spec.name] = spec
    reg = Registry(root=root, **tables)
    for p in reg.protocols.values():
        errors += _check_protocol(reg, p)
    for m in reg.methods.values():
        errors += _check_published(reg, m)
    for s in reg.suites.values():
        errors += _check_suite(reg, s, broken)
    if errors:
        raise RegistryError("\n".join(errors))
    return reg
