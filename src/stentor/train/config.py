"""The training recipe as nested dataclasses, loaded from YAML with strict keys and `--set` overrides.

Every hyperparameter in the card's "Training Hyperparameters - Complete Reference" is a field
here, and the defaults *are* the card's values, so `configs/stentor2-12m.yaml` only restates
them for readability. The `data` section is `stentor.data.DataConfig` itself (one definition).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stentor.data import DataConfig
from stentor.errors import StentorError
from stentor.fileio import read_text

CONFIG_FILE = "config.yaml"  # the resolved recipe inside a run directory
SCHEDULERS = ("cosine", "wsd")
MIXED_PRECISION = ("no", "fp16", "bf16")
TASKS = ("pretrain", "chat")
# Keys a run's config.yaml written before they existed lacks; such runs used their defaults.
ADDED_LATER = {"init_from", "task", "lora", "ddp_timeout", "batch.prefetch", "precision.tf32"}


@dataclass
class ModelSection:
    """A preset from `stentor.model.PRESETS`, optionally with some architecture fields changed."""

    preset: str = "stentor2-12m"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchSection:
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 16
    gradient_accumulation_steps: int = 2
    block_size: int = 1024
    # Only used to plan (`--dry-run`) before any process is launched; a real run counts its processes.
    world_size: int = 2
    # Build the next step's batches on a thread while this one computes (pinned memory on CUDA).
    # None = on CUDA only: on a CPU the thread takes time from the step's own cores.
    prefetch: bool | None = None


@dataclass
class OptimSection:
    """AdamW. Weight decay applies to nn.Linear weights only (not norms, embeddings, biases, tied lm_head)."""

    learning_rate: float = 8e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    max_grad_norm: float = 1.0


@dataclass
class ScheduleSection:
    """Linear warmup, then cosine to 0 (card) or WSD: stable at peak, then a 1-sqrt decay to 0.

    The schedule spans `max_train_steps`; training stops earlier when the token budget or the
    epochs run out (the card's run stopped at step 3,663 of 9,552 on its 480M-token budget).
    """

    scheduler: str = "cosine"
    warmup_ratio: float = 0.05
    stable_ratio: float = 0.80
    max_train_steps: int = 9552
    token_budget: int | None = 480_000_000
    num_train_epochs: int = 2


@dataclass
class EvalSection:
    """Eval every `eval_steps`; best-checkpoint evals every `best_eval_steps` from `best_eval_start_step`."""

    eval_steps: int = 900
    max_eval_samples: int = 5000
    best_eval_steps: int = 900
    best_eval_start_step: int = 1500


@dataclass
class CheckpointSection:
    """Resumable checkpoints: every `save_every_minutes` of wall time and/or every `save_steps` steps."""

    save_every_minutes: float | None = 30
    save_steps: int | None = None
    save_total_limit: int = 2


@dataclass
class LoggingSection:
    logging_steps: int = 300
    tensorboard: bool = False
    # Write each rank's block indices per optimizer step to <run>/data_order/ (audits sharding and resume).
    record_data_order: bool = False


@dataclass
class PrecisionSection:
    """`fp16` (+ GradScaler) is the card's T4 setting; `bf16` for Ampere+/CPU; `no` for fp32."""

    mixed_precision: str = "fp16"
    t4_recipe: bool = True
    critical_layers: int = 2
    compile: bool = False
    # TF32 for fp32 matmuls on Ampere and newer GPUs: faster, but the T4 recipe's FP32 layers then lose mantissa.
    tf32: bool = False
    # Peak FLOP/s of one device for MFU when the device is not in our table (e.g. a CPU); None = omit MFU.
    peak_tflops: float | None = None


@dataclass
class LoraSection:
    """LoRA adapters through peft (`pip install 'stentor[lora]'`): only they train. r = 0 trains every weight.
    best/ and final/ hold the adapters merged into plain weights, so every other command takes them as they are."""

    r: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    # Anything `stentor.tokenizer.hf.load_tokenizer` takes: a TokenMonster name or .vocab, a tokenizer dir, a hub id.
    tokenizer: str = "english-8000-strict-nocapcode-v1"
    data: DataConfig = field(default_factory=DataConfig)
    # Where the tokenized train.bin/val.bin go; default <run dir>/data. Reused when its meta.json matches.
    prepared_dir: str | None = None
    # Processes that tokenize (None = all cores; 0 or 1 = in this process, best for small data).
    prepare_workers: int | None = None
    batch: BatchSection = field(default_factory=BatchSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    eval: EvalSection = field(default_factory=EvalSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    precision: PrecisionSection = field(default_factory=PrecisionSection)
    seed: int = 42
    # Start from a trained model (a directory or hub id): its weights, architecture and tokenizer; the
    # model and tokenizer keys above are then unused. The optimizer and schedule start fresh.
    init_from: str | None = None
    # pretrain: causal LM on packed text (`data` sources of documents). chat: supervised fine-tuning on
    # conversations ({"messages": [...]} records; set the sources' text_field to messages), loss on the
    # assistant turns only, one conversation per row.
    task: str = "pretrain"
    lora: LoraSection = field(default_factory=LoraSection)
    # Seconds a process waits in a collective before the run fails (HF TrainingArguments' name and unit).
    # Hours, not NCCL's 10 minutes: a save or an eval on rank 0 can keep the others waiting that long.
    ddp_timeout: int = 3 * 3600

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    """asdict output with tuples as lists, so yaml.safe_dump can write it."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise StentorError(message)


def validate(cfg: TrainConfig) -> None:
    """Cheap consistency checks, so a bad recipe fails before any data or model work."""
    b, o, s, e, c, lg, p = cfg.batch, cfg.optim, cfg.schedule, cfg.eval, cfg.checkpoint, cfg.logging, cfg.precision
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                 "block_size", "world_size"):
        _require(getattr(b, name) > 0, f"batch.{name} must be positive (got {getattr(b, name)})")
    for name in ("max_train_steps", "num_train_epochs"):
        _require(getattr(s, name) > 0, f"schedule.{name} must be positive (got {getattr(s, name)})")
    for name in ("eval_steps", "max_eval_samples", "best_eval_steps"):
        _require(getattr(e, name) > 0, f"eval.{name} must be positive (got {getattr(e, name)})")
    _require(lg.logging_steps > 0, f"logging.logging_steps must be positive (got {lg.logging_steps})")
    _require(c.save_total_limit >= 1, f"checkpoint.save_total_limit must be at least 1 (got {c.save_total_limit})")
    _require(c.save_steps is None or c.save_steps > 0, "checkpoint.save_steps must be positive or null")
    _require(c.save_every_minutes is None or c.save_every_minutes > 0, "checkpoint.save_every_minutes must be > 0 or null")
    _require(o.learning_rate > 0 and math.isfinite(o.learning_rate), f"optim.learning_rate must be > 0 (got {o.learning_rate})")
    _require(o.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {o.weight_decay})")
    _require(len(o.betas) == 2 and all(0 <= x < 1 for x in o.betas), f"optim.betas must be two numbers in [0, 1) (got {o.betas})")
    _require(o.eps > 0 and o.max_grad_norm > 0, "optim.eps and optim.max_grad_norm must be > 0")
    _require(s.scheduler in SCHEDULERS, f"schedule.scheduler must be one of {', '.join(SCHEDULERS)} (got {s.scheduler!r})")
    _require(0 <= s.warmup_ratio <= 1 and 0 <= s.stable_ratio <= 1, "schedule.warmup_ratio and stable_ratio must be in [0, 1]")
    _require(s.scheduler != "wsd" or s.warmup_ratio + s.stable_ratio <= 1,
             f"schedule: warmup_ratio + stable_ratio = {s.warmup_ratio + s.stable_ratio:g} > 1 leaves no room to decay")
    _require(s.token_budget is None or s.token_budget > 0, "schedule.token_budget must be positive or null (no budget)")
    _require(p.mixed_precision in MIXED_PRECISION,
             f"precision.mixed_precision must be one of {', '.join(MIXED_PRECISION)} (got {p.mixed_precision!r})")
    _require(p.critical_layers >= 0, f"precision.critical_layers must be >= 0 (got {p.critical_layers})")
    _require(cfg.task in TASKS, f"task must be one of {', '.join(TASKS)} (got {cfg.task!r})")
    from stentor.model.presets import get_preset

    get_preset(cfg.model.preset)  # an unknown name fails here, where the error names the recipe
    _require(cfg.ddp_timeout > 0, f"ddp_timeout must be a positive number of seconds (got {cfg.ddp_timeout})")
    lo = cfg.lora
    _require(lo.r >= 0 and lo.alpha > 0 and 0 <= lo.dropout < 1 and len(lo.target_modules) > 0,
             f"lora: r must be >= 0 (0 = off), alpha > 0, dropout in [0, 1), target_modules not empty (got {lo})")


# ---- loading: YAML -> dataclasses, strictly ----------------------------------------------------

def _build(cls: type, raw: Any, where: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, rejecting unknown keys with the valid ones named."""
    if not isinstance(raw, dict):
        raise StentorError(f"config section {where or '(top level)'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            path = f"{where}.{key}" if where else str(key)
            raise StentorError(f"unknown config key {path!r}; valid keys{' in ' + where if where else ''}: {', '.join(names)}")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise StentorError(f"config section {where or '(top level)'}: {exc}") from None


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (tp,) = [a for a in args if a is not type(None)] or (tp,)
        return _convert(tp, value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise StentorError(f"config key {where} must be a list")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise StentorError(f"config key {where} must be a list like [0.9, 0.95]")
        return tuple(value)
    if tp in (int, float) and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)  # YAML 1.1 reads "8e-4" and "4.8e8" as strings
        except ValueError:
            number = math.nan
        if tp is float and not math.isnan(number):
            return number
        if tp is int and number.is_integer():
            return int(number)
    if tp is str and isinstance(value, bool):
        value = "yes" if value else "no"  # YAML 1.1 reads a bare `no` (mixed_precision: no) as false
    if tp in (int, float, str, bool) and not (isinstance(value, tp) and not (tp is int and isinstance(value, bool))):
        raise StentorError(f"config key {where} must be {tp.__name__}, got {value!r}")
    return value


def _apply_override(raw: dict, assignment: str) -> None:
    """`--set schedule.warmup_ratio=0.1`: the value is parsed as YAML (numbers, lists, null)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise StentorError(f"--set expects key.sub=value, got {assignment!r}")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StentorError(f"--set {key}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(text)


def _read_recipe(path: Path) -> dict:
    if not path.is_file():
        raise StentorError(f"config file {path} does not exist; see configs/ for examples")
    text = read_text(path, fix="fix the recipe or start again from one in configs/")
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise StentorError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise StentorError(f"config file {path} holds a YAML {type(raw).__name__}, not the sections of a recipe")
    return raw


def _from_recipe(raw: dict, path: Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    for assignment in overrides:
        _apply_override(raw, assignment)
    if path is None:
        return _build(TrainConfig, raw, "")
    try:
        return _build(TrainConfig, raw, "")
    except StentorError as exc:  # name the recipe the bad value came from
        raise StentorError(f"{path}{' with the --set values' if overrides else ''}: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML recipe (or start from the card's defaults) and apply `key.sub=value` overrides."""
    path = Path(path) if path is not None else None
    return _from_recipe(_read_recipe(path) if path is not None else {}, path, overrides)


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved recipe a run directory was started with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise StentorError(f"{run_dir} is not a stentor run directory ({CONFIG_FILE} missing); give the --out of a run")
    raw = _read_recipe(path)
    cfg = _from_recipe(raw, path)  # no overrides: raw stays as read
    missing = [k for k in _missing_keys(cfg.to_dict(), raw) if k not in ADDED_LATER]
    if missing:  # a run's config lists every setting: a cut file must not resume on the card's defaults
        raise StentorError(f"{path} is damaged: it lacks {', '.join(missing[:3])}; restore it, or start a new run")
    return cfg


def _missing_keys(full: dict, saved: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys of `full` that `saved` lacks, at every depth."""
    missing = []
    for key, value in full.items():
        if key not in saved:
            missing.append(prefix + key)
        elif isinstance(value, dict) and isinstance(saved[key], dict):
            missing += _missing_keys(value, saved[key], f"{prefix}{key}.")
    return missing
