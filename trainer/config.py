"""The run configuration: typed sections, YAML presets, dotted command-line overrides.

A run is described by one `RunConfig`. Presets in `configs/*.yaml` give values for some fields; overrides
such as `train.lr=0.3` change single fields on the command line. Every value is checked against the field's
type once, here, and cross-field rules are checked in `validate` so bad input fails before any work starts.
"""
from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trainer.data.mixture import Mixing
from trainer.data.readers import DataSource
from trainer.data.splits import Splits
from trainer.methods.ptuning import PTuningEncoder
from trainer.methods.registry import get_method
from trainer.methods.router import RouterInit, RouterInput, RoutingVariant
from trainer.methods.smop import PromptInit
from trainer.models.family import Family
from trainer.paths import model_location, shipped_path

class OptimizerName(str, enum.Enum):
    ADAMW = "adamw"
    ADAFACTOR = "adafactor"


class Schedule(str, enum.Enum):
    LINEAR = "linear"
    CONSTANT = "constant"


@dataclass
class TinyModelConfig:
    """Shape of the random backbone built when `model.name_or_path` is 'tiny': a T5 (v1.1 layout, gated-GELU),
    or with model.family=causal a Llama (gated SiLU feed-forward, rotary positions), both with tied
    input and output embeddings."""

    d_model: int = 128
    """Model width d."""
    d_ff: int = 512
    """Feed-forward width."""
    d_kv: int = 32
    """Width of one attention head."""
    num_heads: int = 4
    """Attention heads per layer."""
    kv_heads: int = 0
    """Causal family: key/value heads (grouped-query attention); 0: num_heads."""
    num_layers: int = 4
    """Encoder layers (and decoder layers); a causal LM's layers."""
    vocab_size: int = 0
    """Vocabulary size; 0 takes the tokenizer's."""


@dataclass
class ModelConfig:
    """The frozen backbone."""

    name_or_path: str = "tiny-pretrained"
    """'tiny-pretrained': the small T5 shipped in trainer/assets/tiny-pretrained (pretrained offline on a
    synthetic language by tools/assets/pretrain_tiny.py); 'tiny-pretrained-causal': its decoder-only twin (a
    small Llama); 'tiny': a random backbone from `model.tiny`; else a hub name (google/t5-xl-lm-adapt,
    meta-llama/Llama-3.1-8B) or a save_pretrained dir."""
    family: Family = Family.AUTO
    """'auto': from the backbone's config (encoder-decoder: seq2seq, else causal); 'seq2seq' or 'causal'
    must agree with it, and with 'tiny' choose which random backbone is built (auto: T5)."""
    tokenizer: str = ""
    """Tokenizer name or dir. Empty: the model's own; for 'tiny', a sentencepiece model trained on the data."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """Shape of the 'tiny' backbone."""
    dropout: typing.Optional[float] = None
    """Backbone dropout rate; None keeps the checkpoint's (T5: 0.1; a causal LM: its attention dropout,
    usually 0). The frozen backbone still drops out."""
    trust_remote_code: bool = False
    """Allow code shipped with a hub checkpoint to run. Off unless you trust the checkpoint."""


@dataclass
class PromptConfig:
    """The trainable prompts and their router."""

    method: str = "smop"
    """A registered method (trainer/methods/builtin.py): smop (k prompts, router), prompt_tuning
    (num_prompts=1, no router), ptuning (prompts from an encoder), iapt (per-layer generated prompts) or
    full_finetune (the backbone trains, no prompt); or one you register (README "Adding a method")."""
    num_prompts: int = 4
    """k, the number of soft prompts."""
    prompt_length: int = 5
    """l, the tokens in one prompt."""
    routing: RoutingVariant = RoutingVariant.SMOP
    """Routing variant: smop, top1, topk, dense, gumbel or random (see README)."""
    top_k: int = 2
    """Prompts mixed per example by the 'topk' variant."""
    noise_scale: float = 1.0
    """sigma of the multiplicative Gaussian logit noise of 'smop' routing (training only)."""
    gumbel_temperature: float = 1.0
    """Temperature of the 'gumbel' variant."""
    balance_coef: float = 0.0
    """alpha of the Switch-style load-balancing loss; > 0 turns on the '+balance' variant (paper: 0.01)."""
    router_input: RouterInput = RouterInput.CENTERED
    """What the router reads: 'centered' (the mean input embedding minus its mean over training examples,
    estimated before step 0 and saved with the router) or 'raw' (the paper's: the mean input embedding as
    it is). See README "Routing that mixes" for why centered is the default."""
    router_init: RouterInit = RouterInit.KMEANS
    """Router rows at step 0: 'orthogonal' (the paper's) or 'kmeans' (unit-norm k-means centroids of the
    (centred) router inputs of a training sample: each cluster of inputs starts on its own prompt)."""
    router_center_examples: int = 4096
    """Training examples (evenly spaced over the training set) that the centre and k-means are computed from."""
    init: PromptInit = PromptInit.NORMAL
    """Prompt init: normal N(0,1) (official code), uniform U[-0.5,0.5], vocab (sampled token embeddings), text."""
    init_text: str = ""
    """Text whose token embeddings initialise every prompt when init=text (repeated or cut to l)."""
    init_vocab_top: int = 5000
    """init=vocab samples from the ids below this (sentencepiece ids run roughly by frequency)."""
    ptuning_encoder: PTuningEncoder = PTuningEncoder.MLP
    """P-tuning's prompt encoder: mlp (d->h->h->d, ReLU) or lstm (bidirectional LSTM + MLP head)."""
    ptuning_hidden: int = 128
    """P-tuning encoder width h (128 in the SMoP paper's baseline)."""
    iapt_bottleneck: int = 32
    """IAPT generator bottleneck m; trainable params are about 2 x d x m per encoder layer."""
    iapt_prompts: int = 4
    """IAPT soft tokens written before every encoder layer (the paper's 4)."""
    init_scale: float = 1.0
    """Multiplies the initial prompt values (1: the init as described; huge values make the loss overflow)."""


@dataclass
class DataConfig:
    """Where examples come from and how they are cut."""

    task: str = "jsonl:copy,jsonl:reverse,jsonl:sort,jsonl:count"
    """SuperGLUE task name (boolq, cb, copa, multirc, record, rte, wic, wsc), 'jsonl' (data_dir/*.jsonl with
    input/target/idx) or 'jsonl:NAME' (data_dir/NAME/*.jsonl); comma-separated names (rte,cb) train one
    prompt bank on a mixture of tasks, sampled as data.mixing says. Default: the embedded synthetic mixture."""
    data_dir: str = ""
    """Directory in the official layout (RTE/train.jsonl, RTE/val.jsonl); empty: the embedded data
    (trainer/assets/data: RTE and the copy/reverse/sort/count mixture)."""
    source: DataSource = DataSource.LOCAL
    """'local' reads data_dir; 'hub' calls datasets.load_dataset('super_glue', task)."""
    splits: Splits = Splits.OFFICIAL
    """'official': train on train_split, evaluate on eval_split. 'paper' (the SMoP code's): train on
    train.jsonl less a dev set carved from it (last dev_fraction of each label), evaluate on that dev set
    during training, and on val.jsonl (the official validation set, used as test) once at the end."""
    dev_fraction: float = 0.1
    """splits=paper: the fraction of each label's training records carved off as the dev set."""
    train_split: str = "train"
    """splits=official: split trained on."""
    eval_split: str = "val"
    """splits=official: split evaluated on."""
    mixing: Mixing = Mixing.PROPORTIONAL
    """Task mixtures: 'proportional' shuffles the union of the tasks' examples (each example once per
    epoch); 'temperature' samples task i at rate proportional to n_i^(1/temperature) (T5's mixing)."""
    temperature: float = 2.0
    """T of mixing=temperature: 1 is proportional in expectation; larger T flattens towards uniform."""
    max_source_length: int = 512
    """Encoder length including the l prompt positions and the final </s> (causal family: the prompt and the
    input, BOS and </s> included)."""
    max_target_length: int = 16
    """Target tokens including </s>. Causal family: with max_source_length within the backbone's context."""
    chat_template: bool = False
    """Causal family: wrap each input in the tokenizer's chat template as one user turn, with the assistant's
    turn opened (for instruction-tuned backbones); off: the input's tokens and </s>."""
    max_eval_examples: int = 0
    """Evaluate on at most this many examples of each task (dev and test alike); 0: all."""
    group_by_length: int = 0
    """Batch training inputs of similar length together: sort each window of this many global batches by
    input length, then shuffle the batches (still a function of (seed, step)); 0: off. Pays where lengths
    vary (BoolQ, MultiRC): less padding per micro batch; see docs/benchmarks.md."""


@dataclass
class TrainConfig:
    """Optimisation and the training loop."""

    max_steps: int = 300
    """Optimiser steps."""
    micro_batch_size: int = 8
    """Examples per rank per forward."""
    grad_accum_steps: int = 1
    """Micro batches per optimiser step. Ignored when global_batch_size is set."""
    global_batch_size: int = 0
    """Examples per optimiser step over all ranks; 0: micro_batch_size x grad_accum_steps x world size."""
    optimizer: OptimizerName = OptimizerName.ADAMW
    """adamw, or adafactor (the papers': no relative step, no parameter scaling)."""
    lr: float = 0.3
    """Peak learning rate (prompt tuning uses large rates: 0.3 to 0.5)."""
    weight_decay: float = 1e-5
    """Decoupled weight decay."""
    warmup_ratio: float = 0.06
    """Fraction of max_steps spent warming up linearly."""
    schedule: Schedule = Schedule.LINEAR
    """After warm-up: 'linear' decay to 0 or 'constant'."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm of the trainable parameters; 0 disables."""
    log_every: int = 10
    """Steps between train log events (loss, lr, routing fractions)."""
    eval_every: int = 100
    """Steps between evaluations; 0: only at the end."""
    activation_checkpointing: bool = False
    """Recompute each backbone block in backward instead of keeping its activations: less memory, more
    compute (and under ZeRO-3 one more gather per block). See docs/benchmarks.md for the trade-off."""
    compile: bool = False
    """torch.compile each backbone block's forward for training steps (evaluation stays eager); off by default:
    see docs/benchmarks.md for compile time and speed, trainer/runtime/compile.py for how."""
    check_replicas_every: int = 0
    """Every N steps, verify that every rank holds bit-identical fp32 trainable parameters (0: never)."""
    max_nonfinite: int = 5
    """A step whose loss or gradient is not finite is skipped (no update); this many in a row stop the run."""
    router_lr: float = 0.003
    """Peak learning rate of the router (its own parameter group, same schedule); 0: train.lr. Small by
    default: at prompt-tuning rates (0.3) AdamW rewrites the unit-norm router rows within a few steps and
    the routing of the k-means start is lost (README "Routing that mixes")."""


@dataclass
class MonitorConfig:
    """Watching a run: routing collapse and pictures."""

    collapse_entropy: float = 0.25
    """The clean routing counts as collapsed while its normalised entropy (1 = balanced, 0 = one prompt)
    is below this; 0 turns the detector off."""
    collapse_patience: int = 3
    """Train log events in a row with collapsed clean routing before the warning and the routing_collapse
    event."""
    stop_on_collapse: bool = False
    """Stop the run when collapse is declared: checkpoint saved, exit code 5."""
    plots: bool = True
    """Rank 0 draws the run's pictures (output_dir/plots/*.png, and TensorBoard images) at the end."""
    straggler_factor: float = 1.5
    """A rank counts as slow at a train log event while its own step time (the step less its waits in
    collectives) exceeds this many times the median of the other ranks'; 0 turns the detector off."""
    straggler_patience: int = 3
    """Train log events in a row a rank stays slow before rank 0 names it (rank and host) and logs a
    straggler event."""


class EvalMode(str, enum.Enum):
    GENERATE = "generate"
    RANK = "rank"


@dataclass
class EvalConfig:
    """Evaluation."""

    mode: EvalMode = EvalMode.RANK
    """'generate' (greedy decoding, the paper's) or 'rank' (score each label word, pick the best; tasks
    without label words, ReCoRD and jsonl, are still generated)."""
    batch_size: int = 16
    """Examples per rank per generate call."""
    max_new_tokens: int = 8
    """Tokens generated per example."""
    gather_backbone: typing.Optional[bool] = None
    """ZeRO-3: gather the whole backbone once per evaluation instead of at every forward and decoding step.
    None: when it fits on each device (trainer/runtime/eval_gather.py); true/false: always/never."""


@dataclass
class CheckpointConfig:
    """Checkpoints of what trains (prompts, router, optimiser, scheduler, step, RNG), never the frozen backbone."""

    every: int = 100
    """Steps between checkpoints; 0: only at the end and when stopped by a signal."""
    keep: int = 3
    """Newest checkpoints kept in output_dir/checkpoints; older ones are deleted after each save."""
    resume: str = "auto"
    """'auto': continue from `latest` in output_dir if there is one; 'fresh': start at step 0 (the previous
    run's checkpoints and metrics are moved to output_dir/previous-<time>); 'latest': continue even if the
    config changed; or a checkpoint name (step-000200) or directory to continue from."""
    stop_at: int = 0
    """Stop after this step as if pre-empted (checkpoint, exit code 3): splits a run into jobs; 0: never."""
    at_first_step: bool = False
    """Also checkpoint after step 1: a wrong, read-only or nearly full output_dir fails in the first minute
    (exit code 6) instead of at the first periodic checkpoint."""
    fallback: bool = True
    """Resuming when the newest checkpoint is damaged (size or SHA-256 differs from meta.json, or no
    meta.json): true falls back to the one before, saying so; false makes it an error (exit code 2)."""


@dataclass
class RunConfig:
    """One training run."""

    output_dir: str = "runs/tiny"
    """Receives the resolved config, ds_config, metrics.jsonl, TensorBoard events and the adapter."""
    ds_config: str = "ds_configs/cpu_zero3.json"
    """DeepSpeed JSON (ZeRO stage, precision, offload). Batch keys are filled from `train`."""
    seed: int = 42
    """Seeds model init, prompts, data order and router noise."""
    overwrite: bool = False
    """Allow an output_dir that holds a run with a different config; it then starts fresh (see checkpoint.resume)."""
    collective_timeout_s: float = 1800.0
    """Seconds a collective may wait for the other ranks before the job fails (a dead rank never hangs it)."""
    hang_timeout_s: float = 0.0
    """Seconds without a finished training step (evaluation aside), or inside one collective, after which
    every rank writes its stack and last collective to output_dir/hang/, the lowest such rank prints where
    each rank is, and the run ends with exit code 7; 0: 0.8 x collective_timeout_s. Below collective_timeout_s."""
    interconnect_gbps: float = 100.0
    """Inter-node bandwidth of one node in Gbit/s, for the start-up placement check (smop-plan,
    trainer/perf/plan.py; T5 backbones only)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)


def load_config(preset: str | None, overrides: list[str]) -> RunConfig:
    """Defaults, then the preset file, then `key.sub=value` overrides; validated."""
    cfg = RunConfig()
    if preset:
        path = Path(shipped_path(preset))
        try:
            tree = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ValueError(f"{preset}: cannot read preset ({e.__class__.__name__}: {e})".splitlines()[0]) from e
        if not isinstance(tree, dict):
            raise ValueError(f"{preset}: a preset must be a mapping of config sections")
        for key, value in flatten(tree):
            _set(cfg, key, value, where=preset)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override '{item}' is not key=value")
        _set(cfg, key.strip(), yaml.safe_load(text) if text.strip() else "", where="command line")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Cross-field rules; raises ValueError naming the key at fault."""
    p, t, d = cfg.prompt, cfg.train, cfg.data
    positive = {"prompt.num_prompts": p.num_prompts, "prompt.prompt_length": p.prompt_length,
                "train.max_steps": t.max_steps, "train.micro_batch_size": t.micro_batch_size,
                "train.grad_accum_steps": t.grad_accum_steps, "train.log_every": t.log_every,
                "eval.batch_size": cfg.eval.batch_size, "eval.max_new_tokens": cfg.eval.max_new_tokens,
                "checkpoint.keep": cfg.checkpoint.keep, "train.max_nonfinite": t.max_nonfinite,
                "monitor.collapse_patience": cfg.monitor.collapse_patience,
                "monitor.straggler_patience": cfg.monitor.straggler_patience,
                "prompt.router_center_examples": p.router_center_examples}
    for key, value in positive.items():
        if value < 1:
            raise ValueError(f"{key}={value}: must be at least 1")
    method = get_method(p.method)  # a registered name, and what that method cannot take
    if method.check is not None:
        method.check(p)
    for key, value in {"prompt.ptuning_hidden": p.ptuning_hidden, "prompt.iapt_bottleneck": p.iapt_bottleneck,
                       "prompt.iapt_prompts": p.iapt_prompts}.items():
        if value < 1:
            raise ValueError(f"{key}={value}: must be at least 1")
    if p.routing == RoutingVariant.TOPK and not 1 <= p.top_k <= p.num_prompts:
        raise ValueError(f"prompt.top_k={p.top_k}: must lie in 1..prompt.num_prompts ({p.num_prompts})")
    if p.init == PromptInit.TEXT and not p.init_text:
        raise ValueError("prompt.init_text: required when prompt.init=text")
    if d.max_source_length <= method.prompt_length(p) + 1:
        raise ValueError(f"data.max_source_length={d.max_source_length}: must exceed the {method.prompt_length(p)} "
                         f"prompt positions + 1 to leave room for input tokens and </s>")
    if not 0 < d.dev_fraction < 1:
        raise ValueError(f"data.dev_fraction={d.dev_fraction}: must lie in (0, 1)")
    if d.temperature <= 0:
        raise ValueError(f"data.temperature={d.temperature}: must be positive")
    if d.max_eval_examples < 0:
        raise ValueError(f"data.max_eval_examples={d.max_eval_examples}: must not be negative")
    if d.group_by_length < 0:
        raise ValueError(f"data.group_by_length={d.group_by_length}: must not be negative")
    for key, name in {"model.name_or_path": cfg.model.name_or_path, "model.tokenizer": cfg.model.tokenizer}.items():
        if name and name != "tiny":
            model_location(name, key)
    if not 0 <= t.warmup_ratio < 1:
        raise ValueError(f"train.warmup_ratio={t.warmup_ratio}: must lie in [0, 1)")
    if not 0 <= cfg.monitor.collapse_entropy < 1:
        raise ValueError(f"monitor.collapse_entropy={cfg.monitor.collapse_entropy}: must lie in [0, 1)")
    if not cfg.collective_timeout_s > 0:
        raise ValueError(f"collective_timeout_s={cfg.collective_timeout_s}: must be positive")
    if not 0 <= cfg.hang_timeout_s < cfg.collective_timeout_s:
        raise ValueError(f"hang_timeout_s={cfg.hang_timeout_s}: must lie in [0, collective_timeout_s="
                         f"{cfg.collective_timeout_s}) so that the stacks are written before the timeout ends "
                         "the job (0: 0.8 x collective_timeout_s)")
    if cfg.monitor.straggler_factor != 0 and not cfg.monitor.straggler_factor > 1:
        raise ValueError(f"monitor.straggler_factor={cfg.monitor.straggler_factor}: must exceed 1 (0: off)")
    if not cfg.checkpoint.resume.strip():
        raise ValueError("checkpoint.resume: empty; use auto, fresh, latest or a checkpoint name")
    for key, value in {"checkpoint.every": cfg.checkpoint.every, "checkpoint.stop_at": cfg.checkpoint.stop_at,
                       "prompt.init_scale": p.init_scale, "train.lr": t.lr, "prompt.noise_scale": p.noise_scale,
                       "prompt.balance_coef": p.balance_coef, "train.max_grad_norm": t.max_grad_norm,
                       "train.router_lr": t.router_lr}.items():
        if value < 0:
            raise ValueError(f"{key}={value}: must not be negative")


def to_dict(cfg) -> dict:
    """Plain nested dict (enums as their values), for writing the resolved config."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, enum.Enum):
            value = value.value
        out[f.name] = value
    return out


def flatten(tree: dict, prefix: str = ""):
    """(dotted key, leaf value) pairs of a nested dict."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield prefix + str(key), value


def dataclass_type(cls, name: str):
    """The dataclass a field of `cls` holds, or None for a leaf field."""
    hint = typing.get_type_hints(cls)[name]
    return hint if dataclasses.is_dataclass(hint) else None


def _set(cfg: RunConfig, key: str, value, where: str) -> None:
    *path, leaf = key.split(".")
    node, walked = cfg, []
    for part in path:
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            raise ValueError(f"{where}: unknown config key '{key}'")
        node, walked = getattr(node, part), walked + [part]
        if not dataclasses.is_dataclass(node):
            raise ValueError(f"{where}: unknown config key '{key}' ({'.'.join(walked)} is not a section)")
    names = {f.name for f in dataclasses.fields(node)}
    if leaf not in names:
        section = ".".join(walked) or "the top level"
        raise ValueError(f"{where}: unknown config key '{key}'; known in {section}: {', '.join(sorted(names))}")
    if dataclass_type(type(node), leaf) is not None:
        raise ValueError(f"{where}: '{key}' is a section; set its fields, e.g. {key}.<field>=...")
    setattr(node, leaf, _coerce(typing.get_type_hints(type(node))[leaf], value, key, where))


def _coerce(hint, value, key: str, where: str):
    """Check `value` against the annotation `hint` and convert where it is unambiguous."""
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    bad = ValueError(f"{where}: {key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(str(value))
        except ValueError:
            raise ValueError(f"{where}: {key}: {value!r} is not one of {', '.join(m.value for m in hint)}") from None
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:  # YAML 1.1 reads 1e30 (no dot, no sign) as a string
            return float(value) if isinstance(value, str) else _raise(bad)
        except ValueError:
            raise bad from None
    if hint is str:
        return "" if value is None else str(value)
    raise bad


def _raise(error: Exception):
    raise error
