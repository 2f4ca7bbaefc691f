"""The typed project file: one default per field, task-dependent defaults, `--set` overrides.

Errors name the key, the YAML line and the valid choices. Paths written in the project file are relative to
the file's own folder (so a project folder can be moved as a whole); paths given with `--set` are relative to
the working directory, like any command-line path. `output` defaults to `runs/<name>` in the working directory.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from tunesmith.errors import ConfigError

Task = Literal["generation", "classification", "multilabel", "regression"]
MethodKind = Literal["lora", "dora", "qlora", "full"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class CleanConfig(_Section):
    """What `tunesmith run` fixes before training (`tunesmith data clean` takes the same choices as flags)."""

    normalize: bool = True  # Unicode NFC, one kind of newline, single spaces
    strip_html: bool = True
    fix_mojibake: bool = True
    redact_pii: Literal["off", "mask", "drop"] = "off"
    dedup: Literal["none", "exact", "near"] = "exact"
    too_long: Literal["keep", "truncate", "drop"] = "keep"  # keep: the trainer truncates and counts it


class DataConfig(_Section):
    train: str | list[str] | None = None  # file, list of files, or folder
    eval: str | list[str] | None = None  # watched during training; else split from train
    test: str | list[str] | None = None  # held out for the final metrics; else eval is used
    format: Literal["auto", "chat", "sharegpt", "alpaca", "prompt_completion", "text_label", "text_labels",
                    "text_target", "text"] = "auto"
    # Which column plays which role when the names are not the usual ones, e.g. {input: ticket, label: team}.
    # Roles: input, output, label, labels, target. Regression with several numeric columns lists them:
    # {input: review, target: [quality, speed]} (one output per column, named after it).
    columns: dict[Literal["input", "output", "label", "labels", "target"], str | list[str]] = {}
    clean: CleanConfig = CleanConfig()
    max_seq_len: int | None = None  # None: the task default, clipped to the model's own limit
    eval_fraction: float = 0.1  # share of train split off as eval when data.eval is not given
    system_prompt: str | None = None  # prepended to records that have no system message of their own
    # Personal data in the rows: redact (mask as <EMAIL>, <PHONE>, ...), drop the row, or warn (count, keep).
    # None: follow data.clean.redact_pii (mask -> redact, drop -> drop, off -> nothing). The run card records it.
    pii: Literal["redact", "drop", "warn"] | None = None

    @model_validator(mode="after")
    def _column_lists(self):
        # Only regression reads several columns for one role (one output per target); two outputs reading the
        # same column would be one target counted twice.
        for role, column in self.columns.items():
            if isinstance(column, list) and (role != "target" or not column or len(set(column)) != len(column)):
                raise ValueError(f"data.columns.{role}: only 'target' takes a list, of distinct column names "
                                 "(e.g. target: [quality, speed]); the other roles name one column")
        return self


class ModelConfig(_Section):
    base: str | None = None  # embedded name, local HF directory, or hub id; None: the task default
    # auto: bfloat16 base weights when train.precision resolves to bf16 (CUDA, or a CPU with AVX512-BF16/AMX)
    # and the method is LoRA/DoRA, else float32 (see train/precision.py)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Pickle-based weights (.bin/.pt) can run code when loaded: refused unless set (or --allow-pickle).
    allow_pickle: bool = False
    # Run the Python code a hub repository ships with its model (custom architectures); off unless set.
    trust_remote_code: bool = False
    # task: classification only. head: a sequence-classification head on the body (encoders or decoders);
    # generative: a decoder writes the label as its answer, trained like generation (LoRA, completion-only loss)
    # and decoded constrained to the label set (docs/tasks.md, models/genclass.py).
    classifier: Literal["head", "generative"] = "head"


class MethodConfig(_Section):
    kind: MethodKind = "lora"
    r: int = 16
    lora_alpha: int = 32
    # 0, not PEFT's usual 0.05: on CPU the dropout masks (bernoulli_) took 17% of a LoRA step (profiled,
    # SmolLM2-135M), and Unsloth ships 0 as its default for the same reason.
    lora_dropout: float = 0.0
    target_modules: Literal["auto", "all-linear"] | list[str] = "auto"
    # rsLoRA scales the adapter by alpha/sqrt(r) instead of alpha/r, so higher ranks keep learning (Kalajdzievski 2023).
    use_rslora: bool = False
    # Full-model variants for encoder tasks (method.kind: full): train everything, only the head, or the head
    # plus the top unfreeze_top_k_layers transformer layers.
    freeze: Literal["none", "head_only", "top_k"] = "none"
    unfreeze_top_k_layers: int = 2


class TrainConfig(_Section):
    epochs: float | None = None  # None: the task default
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    lr: float | None = None  # None: the task and method default
    micro_batch_size: int = 8  # rows per forward pass
    global_batch_size: int = 16  # rows per optimizer step; gradient accumulation fills the gap
    # Token budget per forward pass (generation): micro-batches of length-grouped rows whose padded size
    # (rows x longest row) stays within it, accumulated until the step has global_batch_size rows. Short rows
    # then share a pass, long rows get one of their own: memory follows tokens, not rows. None: micro_batch_size.
    micro_batch_tokens: int | None = Field(None, ge=1)
    # Recompute each layer's activations in the backward pass instead of keeping them: far less memory for
    # long rows, about a third more compute.
    gradient_checkpointing: bool = False
    # torch.compile each transformer layer (dynamic shapes): fuses the element-wise ops around the matmuls. The first
    # step waits for the compiler (minutes on a small CPU). Not a default: on an H200, 32 steps of the Llama-3.2-1B
    # shape ran at 1,711 tokens/s against 18,388 without it, likely from recompiling at one-row micro-batches, which
    # are now padded to two rows (data/batching.at_least_two_rows; docs/benchmarks.md).
    compile: bool = False
    warmup_fraction: float = 0.05  # share of the optimizer steps spent warming up the learning rate
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every_steps: int = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # auto: bf16 on CUDA and on CPUs with AVX512-BF16/AMX, else fp32; adapters and optimizer stay fp32
    # (see train/precision.py for the measurements)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Pack several examples into each row (each attends only to itself). auto: off, since length-grouped rows have
    # little padding and keep SDPA's unmasked flash kernel (measured faster on CPU and on an H200; docs/benchmarks.md).
    packing: Literal["auto"] | bool = "auto"
    # Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) for bf16 LoRA on CUDA. auto: when
    # the optional extra is installed (pip install 'tunesmith[liger]') and the model type has them; true: must run.
    liger: Literal["auto"] | bool = "auto"
    # Fused C kernels for SwiGLU, RMSNorm, RoPE and the causal softmax of LoRA training on a CPU, compiled once per
    # machine with the system C compiler (train/cpu_kernels.py). auto: when a compiler builds them, else PyTorch
    # ops; true: must build (else an error naming the fix); false: PyTorch ops.
    cpu_kernels: Literal["auto"] | bool = "auto"
    # Under torchrun / accelerate launch (docs/scale-out.md). auto: ddp, or fsdp for full fine-tuning.
    distributed: Literal["auto", "ddp", "fsdp", "deepspeed"] = "auto"
    # classification / multilabel / regression only:
    class_weights: Literal["none", "balanced"] = "none"  # balanced: weight each class by n / (k * count)
    head_lr_multiplier: float = 10.0  # the freshly initialized head learns at lr x this (it starts from noise)
    normalize_targets: bool = True  # regression: train on (y - mean) / std, undone at prediction
    # Crash safety (docs/reliability.md): a checkpoint every N optimizer steps (0: at evaluations and epoch
    # ends only), the newest keep_checkpoints kept plus the best by eval loss.
    checkpoint_every_steps: int = Field(0, ge=0)
    keep_checkpoints: int = Field(2, ge=1)
    # Held-out eval loss every N optimizer steps (0: at epoch ends only); every evaluation also checkpoints,
    # so the best weights are always on disk.
    eval_every_steps: int = Field(0, ge=0)
    # Stop after this many evaluations without an improvement of at least early_stopping_min_delta (0: off).
    early_stopping_patience: int = Field(0, ge=0)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    # The final adapter holds the best evaluation's weights (always so when early stopping stops the run).
    load_best: bool = False
    # Optimizer steps in a row whose loss or gradients are NaN/inf that are skipped before the run stops.
    max_bad_steps: int = Field(5, ge=0)
    # Where metrics.jsonl records are mirrored as well: RUN_DIR/tensorboard or an MLflow store RUN_DIR/mlruns.
    tracking: Literal["none", "tensorboard", "mlflow"] = "none"


class EvalConfig(_Section):
    metrics: Literal["auto"] | list[str] = "auto"  # auto: chosen by task
    compare_base: bool = True
    max_new_tokens: int = 128
    batch_size: int = 16
    max_examples: int | None = None  # cap on evaluated examples (None: all)
    # Perplexity on a general-text probe, base vs fine-tuned (eval/forgetting.py); decoder tasks only.
    forgetting: bool = True
    forgetting_threshold_pct: float = 10.0  # warn when the fine-tuned perplexity is this much higher


class SweepParam(_Section):
    """One searched key: a range (low/high; log: true for learning rates) or a list of choices."""

    low: float | None = None
    high: float | None = None
    log: bool = False  # sample uniformly in log space: 1e-5..1e-3 gives each decade the same share
    step: float | None = None  # grid spacing within low..high (not with log)
    choices: list[int | float | str | bool] | None = None

    @model_validator(mode="after")
    def _range_or_choices(self):
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either a non-empty 'choices' list or 'low' and 'high', not both")
        elif self.low is None or self.high is None or self.low >= self.high:
            raise ValueError("give 'low' and 'high' with low < high (or a 'choices' list)")
        elif self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: true needs low > 0 and no step")
        return self


class SweepConfig(_Section):
    """`tunesmith sweep`: what to search and how (see docs/iterate.md)."""

    # Dotted project keys to search, e.g. {train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}}.
    # Empty: the default space (lr around the task default, method.r, method.lora_alpha, train.epochs).
    params: dict[str, SweepParam] = {}
    metric: str = "eval_loss"  # eval_loss (no generation: fast), or an eval metric such as rougeL
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: minimize losses and errors
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "threshold", "none"] = "median"
    prune_startup_trials: int = 2  # median: trials that run in full before any is pruned
    prune_threshold: float | None = None  # threshold: stop a trial whose eval loss is above this
    seed: int | None = None  # sampler seed; None so that workers sharing a study do not draw the same params
    # A worker that dies mid-trial stops beating; after grace_period_s (None: 2 x the interval) the next
    # worker marks its trial FAIL instead of leaving it RUNNING forever.
    heartbeat_interval_s: int = 60
    grace_period_s: int | None = None


class ProjectConfig(_Section):
    name: str = "run"
    task: Task = "generation"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    method: MethodConfig = MethodConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    sweep: SweepConfig = SweepConfig()
    output: str | None = None  # the run directory; None: runs/<name>
    # The folder of the project file (the run card records its git commit); not a key of the file.
    _source_dir: str | None = PrivateAttr(default=None)


# Defaults that follow the task unless the project file sets them. Why these numbers: LoRA on a decoder
# tolerates a high lr (2e-4, the QLoRA paper's value); encoders fine-tune at 5e-5 (BERT paper range);
# full fine-tuning of a decoder wants ~10x less than LoRA.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "generation": {"model.base": "smollm2-135m-instruct", "train.epochs": 2, "train.lr": 2.0e-4,
                   "data.max_seq_len": 1024,
                   "eval.metrics": ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "meteor",
                                    "exact_match", "perplexity", "token_accuracy"]},
    "classification": {"model.base": "minilm-l6", "train.epochs": 3, "train.lr": 5.0e-5,
                       "data.max_seq_len": 512, "eval.metrics": ["accuracy", "precision_macro", "recall_macro",
                                                                  "f1_macro", "f1_micro", "f1_weighted"]},
    "multilabel": {"model.base": "minilm-l6", "train.epochs": 3, "train.lr": 5.0e-5,
                   "data.max_seq_len": 512, "eval.metrics": ["f1_micro", "f1_macro", "subset_accuracy",
                                                              "hamming_loss"]},
    "regression": {"model.base": "minilm-l6", "train.epochs": 3, "train.lr": 5.0e-5,
                   "data.max_seq_len": 512, "eval.metrics": ["mse", "mae", "r2"]},
}
# model.classifier: generative trains a decoder to write the label, i.e. a generation run on short answers: the
# generation defaults (decoder base, LoRA lr 2e-4, 2 epochs) fit it, not the encoder head's. 512 tokens hold the
# prompt with the label list (27 Bitext intents: 188 SmolLM2 tokens) and a long support message.
GENERATIVE_CLASSIFICATION_DEFAULTS: dict[str, Any] = {
    "model.base": "smollm2-135m-instruct", "train.epochs": 2, "train.lr": 2.0e-4, "data.max_seq_len": 512,
    "eval.metrics": TASK_DEFAULTS["classification"]["eval.metrics"]}
FULL_FINETUNE_LR = 2.0e-5
# Encoder tasks (classification, multilabel, regression): TASK_DEFAULTS' 5e-5 is the full fine-tuning rate of the
# BERT paper; adapters move a low-rank slice of each weight and need ~10x more to learn as fast (5e-4, checked on
# the Bitext intents in docs/tasks.md). The head trains at train.head_lr_multiplier x these.
ENCODER_ADAPTER_LR = 5.0e-4
PATH_KEYS = ("data.train", "data.eval", "data.test")


def _line_map(node: yaml.Node, prefix: str = "", out: dict[str, int] | None = None) -> dict[str, int]:
    """Map each dotted key path to its 1-based line in the YAML file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = f"{prefix}{key_node.value}"
            out[path] = key_node.start_mark.line + 1
            _line_map(value_node, path + ".", out)
    return out


def _valid_keys(section: type[BaseModel]) -> list[str]:
    return list(section.model_fields)


def _section_for(path: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = ProjectConfig
    for part in path:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return None
    return model


def _check_unknown_keys(raw: dict, lines: dict[str, int], source: str, prefix: list[str] | None = None) -> None:
    prefix = prefix or []
    section = _section_for(prefix) or ProjectConfig
    valid = _valid_keys(section)
    for key, value in raw.items():
        path = prefix + [str(key)]
        dotted = ".".join(path)
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"did you mean '{'.'.join(prefix + [close[0]])}'? " if close else ""
            where = f"{source}:{lines[dotted]}" if dotted in lines else source
            raise ConfigError(f"unknown key '{dotted}'",
                              f"{hint}valid keys {'under ' + '.'.join(prefix) if prefix else 'at the top level'}: "
                              f"{', '.join(valid)}", where=where)
        sub = _section_for(path)
        if sub is not None:
            if value is None:
                continue
            if not isinstance(value, dict):
                where = f"{source}:{lines[dotted]}" if dotted in lines else source
                raise ConfigError(f"'{dotted}' must be a mapping of keys, got {type(value).__name__}",
                                  f"indent its keys under it, e.g. '{dotted}:\\n  {_valid_keys(sub)[0]}: ...'",
                                  where=where)
            _check_unknown_keys(value, lines, source, path)


def _describe_expected(loc: tuple, section: type[BaseModel] = ProjectConfig) -> str:
    model: Any = section
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            break
        model = model.model_fields[part].annotation
    text = str(model).replace("typing.", "").replace("<class '", "").replace("'>", "")
    return text


def _validate(raw: dict, lines: dict[str, int], source: str) -> ProjectConfig:
    try:
        return ProjectConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(p for p in first["loc"] if isinstance(p, str))
        dotted = ".".join(loc)
        where = f"{source}:{lines[dotted]}" if dotted in lines else source
        got = first.get("input")
        raise ConfigError(f"'{dotted}' has an invalid value {got!r}: {first['msg']}",
                          f"set '{dotted}' to a value of type {_describe_expected(loc)}", where=where) from None


def _check_sweep_keys(config: ProjectConfig, lines: dict[str, int], source: str) -> None:
    """Each searched key must be a project key that --set accepts (the trials apply them through --set)."""
    for dotted in config.sweep.params:
        parts = dotted.split(".")
        section = _section_for(parts[:-1])
        where = f"{source}:{lines[f'sweep.params.{dotted}']}" if f"sweep.params.{dotted}" in lines else source
        if parts[0] in ("sweep", "output", "name") or section is None or parts[-1] not in _valid_keys(section) \
                or _section_for(parts) is not None:
            valid = [f"{'.'.join(parts[:-1])}.{k}" for k in _valid_keys(section)] if section and len(parts) > 1 \
                else ["train.lr", "train.epochs", "method.r", "method.lora_alpha", "train.global_batch_size"]
            close = difflib.get_close_matches(dotted, valid, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise ConfigError(f"unknown key 'sweep.params.{dotted}': not a project key a trial can set",
                              f"{hint}search dotted project keys such as {', '.join(valid)}", where=where)


def _set_path(raw: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if _section_for(parts[:-1]) is None or parts[-1] not in _valid_keys(_section_for(parts[:-1])):
        section = _section_for(parts[:-1])
        valid = ", ".join(f"{'.'.join(parts[:-1] + [k])}" for k in _valid_keys(section)) if section else \
            ", ".join(_valid_keys(ProjectConfig))
        raise ConfigError(f"unknown key '{dotted}' in --set", f"valid keys: {valid}", where="--set")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value`, the value read as a YAML scalar so numbers, booleans and lists keep their types."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}' is not of the form key=value", "write e.g. --set train.epochs=1",
                          where="--set")
    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _resolve_paths(value: str | list[str] | None, base: Path) -> str | list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str((base / v).resolve()) if not Path(v).is_absolute() else v for v in value]
    return str((base / value).resolve()) if not Path(value).is_absolute() else value


def is_generative_classifier(raw: dict) -> bool:
    return (raw.get("model") or {}).get("classifier") == "generative"


def task_defaults(task: str, classifier: str = "head") -> dict[str, Any]:
    """The defaults of a task; generative classification takes the decoder's (see above)."""
    if task == "classification" and classifier == "generative":
        return GENERATIVE_CLASSIFICATION_DEFAULTS
    return TASK_DEFAULTS.get(task, {})


def _fill_task_defaults(raw: dict) -> None:
    task = raw.get("task") or "generation"
    for dotted, default in task_defaults(task, (raw.get("model") or {}).get("classifier") or "head").items():
        section, key = dotted.split(".")
        raw.setdefault(section, {})
        if raw[section] is None:
            raw[section] = {}
        if raw[section].get(key) is None:
            raw[section][key] = default


def _check_generative(config: ProjectConfig, lines: dict[str, int], source: str) -> None:
    """model.classifier: generative needs task classification and a decoder (checked here for the embedded
    models; models/genclass.require_decoder checks any other base once its config.json is at hand)."""
    if config.model.classifier != "generative":
        return
    where = f"{source}:{lines['model.classifier']}" if "model.classifier" in lines else source
    if config.task != "classification":
        raise ConfigError(f"model.classifier: generative works with task: classification, not {config.task}",
                          "set model.classifier: head (the default) for this task, or task: classification",
                          where=where)
    from tunesmith.models.registry import EMBEDDED

    embedded = EMBEDDED.get(config.model.base or "")
    if embedded is not None and embedded.kind != "causal":
        raise ConfigError(f"model.classifier: generative needs a decoder that writes the label, but model.base "
                          f"'{config.model.base}' is an encoder",
                          "set model.classifier: head to train a classification head on it, or use a decoder "
                          "such as model.base: smollm2-135m-instruct", where=where)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict | None = None) -> ProjectConfig:
    """Read a project file (or a dict), apply `--set` overrides, fill task defaults, validate."""
    lines: dict[str, int] = {}
    base_dir = Path.cwd()
    source = "<config>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"project file '{path}' does not exist",
                              "pass the path of a YAML project file, e.g. examples/support/project.yaml")
        text = path.read_text(encoding="utf-8")
        try:
            node = yaml.compose(text)
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"not valid YAML ({getattr(exc, 'problem', exc)})",
                              "check the indentation and quoting on that line", where=where) from None
        if node is not None:
            lines = _line_map(node)
        base_dir = path.resolve().parent
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError("the project file must be a mapping of keys (task, data, model, ...)",
                          "start from examples/support/project.yaml", where=source)
    _check_unknown_keys(raw, lines, source)
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for key in PATH_KEYS:
        section, field = key.split(".")
        if isinstance(raw.get(section), dict) and field in raw[section]:
            raw[section][field] = _resolve_paths(raw[section][field], base_dir)
    explicit_lr = isinstance(raw.get("train"), dict) and raw["train"].get("lr") is not None
    for text in overrides or []:
        key, value = parse_override(text)
        if key in PATH_KEYS:
            value = _resolve_paths(value, Path.cwd())
        if key == "train.lr" and value is not None:
            explicit_lr = True
        _set_path(raw, key, value)
    if path is not None and "name" not in raw:
        raw["name"] = path.stem if path.stem != "project" else path.resolve().parent.name
    _fill_task_defaults(raw)
    full_decoder = (raw.get("method") or {}).get("kind") == "full" and raw.get("task", "generation") == "generation"
    if full_decoder and not explicit_lr:
        raw["train"]["lr"] = FULL_FINETUNE_LR
    encoder_adapters = raw.get("task", "generation") != "generation" and not is_generative_classifier(raw) and \
        (raw.get("method") or {}).get("kind", "lora") in ("lora", "dora", "qlora")
    if encoder_adapters and not explicit_lr:
        raw["train"]["lr"] = ENCODER_ADAPTER_LR
    config = _validate(raw, lines, source)
    _check_generative(config, lines, source)
    _check_sweep_keys(config, lines, source)
    if config.output is None:
        config.output = str(Path("runs") / config.name)
    config._source_dir = str(base_dir)
    return config


def dump_config(config: ProjectConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
