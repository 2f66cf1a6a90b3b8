"""TrainConfig: every training knob, with nanoGPT's own names, and how to build one.

Layers, later wins: the dataclass defaults (= the `cpu-small` preset), a
preset, a TOML file (`--config FILE`), command-line flags. Flags accept
`--n_layer 4`, `--n_layer=4` and `--n-layer 4`; booleans accept `--compile`,
`--no-compile` and `--compile=False`. No `exec` of config files, no globals.
Every mistake is a ConfigError whose message names the offending key and value.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tomllib
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["TrainConfig", "ConfigError", "PRESETS", "parse_args", "build_config", "validate", "field_kind"]


class ConfigError(ValueError):
    """A bad configuration; the message is one line that names the value."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the `cpu-small` preset (nanoGPT's small CPU config)."""

    # I/O
    out_dir: str = "out"  # checkpoints (ckpt.pt) go here
    eval_interval: int = 250  # iterations between evaluations (and checkpoint saves)
    log_interval: int = 10  # iterations between logged points (the only loss syncs)
    eval_iters: int = 20  # batches per split in each evaluation
    eval_only: bool = False  # evaluate once at the start, then exit
    always_save_checkpoint: bool = True  # save at every eval, not only when val loss improves
    init_from: str = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt); --resume sets 'resume'
    # data
    dataset: str = "python-docs"  # 'python-docs' (offline, ships with Python) or 'shakespeare' (download)
    data_file: str = ""  # any UTF-8 text file; overrides dataset
    data_cache_dir: str = ""  # encoded-data cache; '' = $NANOGPT_CACHE_DIR or ~/.cache/nanogpt-monitor
    gradient_accumulation_steps: int = 1  # micro-steps per iteration, over all DDP ranks together
    batch_size: int = 12  # sequences per micro-step per rank
    block_size: int = 64  # context length in tokens (characters)
    # model
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # bias in Linears and LayerNorms
    # AdamW
    learning_rate: float = 1e-3  # peak learning rate
    max_iters: int = 1000  # the last iteration trained (nanoGPT trains iterations 0..max_iters)
    weight_decay: float = 1e-1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip gradients to this norm; 0 disables clipping
    # learning-rate schedule: linear warmup, cosine decay to min_lr
    decay_lr: bool = True
    warmup_iters: int = 100
    lr_decay_iters: int = 1000  # ~= max_iters per Chinchilla
    min_lr: float = 1e-4  # ~= learning_rate / 10 per Chinchilla
    # system
    backend: str = "auto"  # DDP backend: 'auto' (nccl on CUDA, gloo on CPU), 'gloo' or 'nccl'
    device: str = "auto"  # 'auto' (cuda if present), 'cpu', 'cuda', 'cuda:1', 'mps'
    dtype: str = "auto"  # 'auto', 'float32', 'bfloat16' or 'float16'; CPU always trains in float32
    compile: bool = False  # torch.compile the model (nanoGPT's default is True; here opt-in: slow to start on CPU)
    seed: int = 1337  # each DDP rank uses seed + rank
    # what the model writes, shown on the live page: characters generated at each eval from
    # sample_prompt with a fixed seed, outside the timed steps (0 = no sample)
    sample_chars: int = 200
    sample_prompt: str = "\n"
    peak_flops: float = 0.0  # device peak FLOP/s for MFU; 0 = the known peak of NVIDIA GPUs in bf16/fp16, else no MFU
    preset: str = "cpu-small"  # named base config, see PRESETS
    # metrics (read by the CLI's exporter wiring, not by the loop)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8000  # 0 = any free port; one monitor process per node serves every local rank here
    # where the run's figures are recorded for the monitor; '' = a per-run folder under the temp dir
    metrics_dir: str = ""
    metrics_external: bool = False  # a monitor started separately (nanogpt-monitor serve) serves metrics_dir
    run_id: str = ""  # '' = nanogpt-train generates one
    no_metrics: bool = False
    # seconds to keep serving after training ends; None (not given) = until Ctrl-C when started from
    # a terminal, else 0 (see nanogpt.cli.linger_seconds)
    metrics_linger: float | None = None
    metrics_web_config: str = ""  # exporter-toolkit web config (basic auth, TLS) for the metrics server; '' = off
    # a logged loss or grad norm more than this many standard deviations above the mean of the last
    # metrics_spike_window logged ones is a spike (nanogpt_loss_spikes_total, NanoGPTLossSpike)
    metrics_spike_window: int = 128
    metrics_spike_sigmas: float = 6.0
    stop_on_nonfinite: bool = False  # stop as "failed" at a non-finite logged loss, without saving it

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python values (for checkpoints and RunStart.config)."""
        return dataclasses.asdict(self)


# nanoGPT's config/train_shakespeare_char.py, key for key ('shakespeare_char' is our 'shakespeare')
_SHAKESPEARE_CHAR: dict[str, Any] = dict(
    out_dir="out-shakespeare-char", eval_interval=250, eval_iters=200, log_interval=10,
    always_save_checkpoint=False, dataset="shakespeare", gradient_accumulation_steps=1,
    batch_size=64, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2,
    learning_rate=1e-3, max_iters=5000, lr_decay_iters=5000, min_lr=1e-4, beta2=0.99, warmup_iters=100,
)  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "cpu-small": {},  # the dataclass defaults: visible learning in about a minute on 2 CPU cores
    "shakespeare-char": _SHAKESPEARE_CHAR,
}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_CHOICES = {
    "init_from": ("scratch", "resume"),
    "backend": ("auto", "gloo", "nccl"),
    "dtype": ("auto", "float32", "bfloat16", "float16"),
    "preset": tuple(PRESETS),
}
_POSITIVE = ("eval_interval", "log_interval", "eval_iters", "gradient_accumulation_steps",
             "batch_size", "block_size", "n_layer", "n_head", "n_embd")  # fmt: skip
_NON_NEGATIVE = ("max_iters", "warmup_iters", "lr_decay_iters", "learning_rate", "min_lr",
                 "weight_decay", "grad_clip", "peak_flops", "metrics_linger", "sample_chars")  # fmt: skip


def field_kind(field: dataclasses.Field) -> str:
    """'int', 'float', 'bool' or 'str': the field's type, less an optional '| None' (the unset default)."""
    return field.type.removesuffix(" | None")  # a string under `from __future__ import annotations`


def _check_type(key: str, value: Any, origin: str) -> Any:
    """Return value as the field's type, or raise ConfigError naming key and value."""
    kind = field_kind(_FIELDS[key])
    ok = {
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "str": isinstance(value, str),
    }[kind]
    if not ok:
        article = "an" if kind == "int" else "a"
        raise ConfigError(f"{key} must be {article} {kind}, got {value!r} ({origin})")
    if kind == "float" and not (abs(value) < 1e308 and math.isfinite(value)):  # nan, inf, 10**400 (TOML)
        raise ConfigError(f"{key} must be a finite number, got {value!r} ({origin})")
    return float(value) if kind == "float" else value


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for a value out of range or an inconsistent combination."""
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {getattr(cfg, key)!r}")
    for key in _POSITIVE:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)!r}")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) is not None and getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)!r}")
    if cfg.n_embd % cfg.n_head != 0:
        raise ConfigError(f"n_embd={cfg.n_embd} must be divisible by n_head={cfg.n_head}")
    if cfg.metrics_spike_window < 2 or not cfg.metrics_spike_sigmas > 0:
        raise ConfigError(f"metrics_spike_window must be at least 2 and metrics_spike_sigmas above 0, got "
                          f"{cfg.metrics_spike_window!r} and {cfg.metrics_spike_sigmas!r}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {cfg.dropout!r}")
    if not 0 <= cfg.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be in 0..65535, got {cfg.metrics_port!r}")


def build_config(*layers: tuple[dict[str, Any], str]) -> TrainConfig:
    """Merge (values, origin) layers over the preset they name; check keys, types and ranges."""
    merged: dict[str, Any] = {}
    for values, origin in layers:
        for key, value in values.items():
            if key not in _FIELDS:
                raise ConfigError(f"unknown config key {key!r} ({origin})")
            merged[key] = _check_type(key, value, origin)
    preset = merged.get("preset", TrainConfig.preset)
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    cfg = TrainConfig(**{**PRESETS[preset], **merged})
    validate(cfg)
    return cfg


def load_toml(path: str) -> dict[str, Any]:
    """The key/value table of a TOML config file; a bad file is a ConfigError."""
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path!r}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
    nested = [k for k, v in table.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"config file {path!r}: unknown config key {nested[0]!r} (tables are not used)")
    return table


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports mistakes as a ConfigError instead of usage + exit."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(message.replace("\r", "\\r").replace("\n", "\\n"))  # argv may hold newlines


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="nanogpt-train",
        description="Train a character-level nanoGPT that serves its own metrics.",
        argument_default=argparse.SUPPRESS,  # only flags actually given override lower layers
        allow_abbrev=False,
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with the same keys as the flags")
    p.add_argument("--resume", action="store_const", const="resume", dest="init_from",
                   help="continue from out_dir/ckpt.pt (same as --init_from resume)")  # fmt: skip
    for name, f in _FIELDS.items():
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if field_kind(f) == "bool":
            p.add_argument(*flags, dest=name, nargs="?", const=True, type=_parse_bool, metavar="BOOL",
                           help=f"default: {f.default}")  # fmt: skip
            p.add_argument(*(f"--no-{x[2:]}" for x in flags), dest=name, action="store_const", const=False,
                           help=argparse.SUPPRESS)  # fmt: skip
        else:
            p.add_argument(*flags, dest=name, type={"int": int, "float": float, "str": str}[field_kind(f)],
                           help=f"default: {f.default!r}")  # fmt: skip
    return p


def parse_args(argv: Sequence[str] | None = None) -> TrainConfig:
    """Build a TrainConfig from command-line arguments (and the TOML file they name)."""
    args = vars(_parser().parse_args(argv))
    config_file = args.pop("config", None)
    layers = [(load_toml(config_file), f"in {config_file}")] if config_file else []
    layers.append((args, "on the command line"))
    return build_config(*layers)
