"""Check a config before anything compiles; every failure is one line naming the key and the fix.

Each key alone is checked against its declaration in base.py (`check_keys`); `validate` adds the checks that
need several keys, the devices or the finalized (derived) sizes."""

import math

import ml_collections

from llm_jax.config.base import KEYS
from llm_jax.config.load import ConfigError, flatten, get_key, unknown_key

MESH_AXES = ("data", "fsdp", "tensor")


def check_keys(cfg: ml_collections.ConfigDict) -> None:
    """Every key is one declared in base.py, and its value has the declared type and is among its choices / in its
    range (numbers finite). Needs no devices and no finalize(): the CLI runs it right after loading the config."""
    values = flatten(cfg.to_dict())
    for name in values:
        if name not in KEYS:
            raise unknown_key(name, "the config file")
    for name, declared in KEYS.items():
        if name not in values:
            raise ConfigError(f"config key '{name}' is missing; a config file must start from base_config() and only "
                              "change values")
        problem = declared.problem(values[name])
        if problem:
            raise ConfigError(f"{name}={values[name]!r} {problem} ({declared.help})")


def mesh_axes(target) -> tuple[str, ...]:
    """A rule's (or PartitionSpec entry's) target -- None, one axis name, or several -- as a tuple of axis names."""
    return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def _resolve_axes(sizes: list[int], keys: list[str], total: int, what: str) -> tuple[int, ...]:
    named = ", ".join(f"{k}={v}" for k, v in zip(keys, sizes, strict=True))
    if sizes.count(-1) > 1:
        raise ConfigError(f"only one of {', '.join(keys)} may be -1, got {named}; set the others to explicit sizes")
    if any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"mesh axes must be positive or -1, got {named}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if total % known:
            raise ConfigError(f"{named} cannot fill {total} {what}: {total} is not divisible by {known}; change the "
                              f"explicit axes so their product divides {total}")
        sizes[sizes.index(-1)] = total // known
    elif known != total:
        raise ConfigError(f"{named} uses {known} {what} but there are {total}; make the product {total}, or set "
                          "one axis to -1 to take the rest")
    return tuple(sizes)


def uses_dcn(mesh: ml_collections.ConfigDict) -> bool:
    """Whether any mesh axis crosses slices / nodes (a `mesh.dcn_*` size other than 1)."""
    return any(mesh[f"dcn_{a}"] != 1 for a in MESH_AXES)


def resolve_mesh(mesh: ml_collections.ConfigDict, num_devices: int,
                 num_granules: int = 1) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (data, fsdp, tensor) sizes inside a slice/node (ICI) and across the `num_granules` slices/nodes (DCN),
    with -1 axes filled in. Each mesh axis is ICI size x DCN size."""
    if num_devices % num_granules:
        raise ConfigError(f"{num_devices} devices do not split evenly over {num_granules} slices/nodes")
    dcn = _resolve_axes([int(mesh[f"dcn_{a}"]) for a in MESH_AXES], [f"mesh.dcn_{a}" for a in MESH_AXES],
                        num_granules, "slices/nodes (processes on GPU and CPU)")
    ici = _resolve_axes([int(mesh[a]) for a in MESH_AXES], [f"mesh.{a}" for a in MESH_AXES],
                        num_devices // num_granules, "devices per slice/node")
    return ici, dcn


def resolve_mesh_shape(mesh: ml_collections.ConfigDict, num_devices: int, num_granules: int = 1) -> tuple[int, ...]:
    """The whole (data, fsdp, tensor) mesh: ICI x DCN per axis."""
    ici, dcn = resolve_mesh(mesh, num_devices, num_granules)
    return tuple(i * d for i, d in zip(ici, dcn, strict=True))


def shards_of(cfg: ml_collections.ConfigDict, mesh_shape: tuple[int, ...], logical: str) -> tuple[int, str]:
    """How many ways the first rule for `logical` splits it, and those mesh axes as config keys."""
    sizes = dict(zip(MESH_AXES, mesh_shape, strict=True))
    for name, target in cfg.sharding.rules:
        if name == logical:
            axes = mesh_axes(target)
            return math.prod(sizes[a] for a in axes), "*".join(f"mesh.{a}" for a in axes) or "nothing"
    raise ConfigError(f"sharding.rules has no rule for logical axis '{logical}'; add ('{logical}', None) "
                      "to replicate it or map it to a mesh axis")


def finalize(cfg: ml_collections.ConfigDict, tokenizer_vocab: int) -> ml_collections.ConfigDict:
    """A copy with the derived defaults (0 = 'derive me') filled in."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    m = cfg.model
    if m.num_kv_heads == 0:
        m.num_kv_heads = m.num_heads
    if m.head_dim == 0 and m.num_heads > 0:
        if m.d_model % m.num_heads:
            raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.num_heads={m.num_heads}; "
                              "change one, or set model.head_dim explicitly")
        m.head_dim = m.d_model // m.num_heads
    if m.vocab_size == 0:
        m.vocab_size = -(-tokenizer_vocab // m.vocab_multiple) * m.vocab_multiple
    elif m.vocab_size < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={m.vocab_size} is smaller than the {tokenizer_vocab} ids it needs (the "
                          "tokenizer's and the objective's [MASK] or sentinels); raise it or set it to 0 to follow "
                          "them")
    return cfg


def _check_rules(rules) -> None:
    for entry in rules:
        if not (isinstance(entry, tuple | list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise ConfigError(f"sharding.rules entry {entry!r} must be a (logical_axis, mesh_axes) pair")
        for a in mesh_axes(entry[1]):
            if a not in MESH_AXES:
                raise ConfigError(f"sharding.rules maps '{entry[0]}' to unknown mesh axis '{a}'; "
                                  f"use one of {', '.join(MESH_AXES)} or None")


def _divides(cfg, mesh_shape, key: str, logical: str) -> None:
    value = get_key(cfg, key)
    n, axes = shards_of(cfg, mesh_shape, logical)
    if value % n:
        raise ConfigError(f"{key}={value} is not divisible by {axes}={n} (the mesh axes that shard '{logical}'); "
                          f"make {key} a multiple of {n} or shrink those mesh axes")


def _check_attention(cfg: ml_collections.ConfigDict) -> None:
    """What an explicitly chosen fused kernel cannot do (`auto` picks around it by itself)."""
    m = cfg.model
    if m.attention == "cudnn" and m.dtype not in ("bfloat16", "float16"):
        raise ConfigError(f"model.attention=cudnn computes in bfloat16/float16, not model.dtype={m.dtype}; set "
                          "model.dtype=bfloat16 or model.attention=auto")
    if m.attention == "splash" and (m.attention_block_q % 128 or m.attention_block_kv % 128):
        raise ConfigError(f"model.attention=splash needs blocks of whole TPU lanes (multiples of 128), not "
                          f"model.attention_block_q={m.attention_block_q}, model.attention_block_kv="
                          f"{m.attention_block_kv}")
    if m.attention == "splash" and m.positions == "relative":
        raise ConfigError("model.attention=splash takes no position bias (model.positions=relative); use "
                          "model.attention=chunked or auto")
    if m.attention == "splash" and cfg.objective.name == "prefix_lm":
        raise ConfigError("model.attention=splash has no prefix-LM mask (objective.name=prefix_lm); use "
                          "model.attention=chunked or auto")


def validate(cfg: ml_collections.ConfigDict, num_devices: int, process_count: int = 1,
             num_granules: int | None = None) -> tuple[int, ...]:
    """Raise ConfigError on the first problem; return the resolved mesh shape. `cfg` must be finalized.
    `num_granules`: slices (TPU) or processes (GPU, CPU) that DCN axes span; default: 1 unless a DCN axis is
    set, then the process count."""
    check_keys(cfg)
    _check_rules(cfg.sharding.rules)
    if num_granules is None:
        num_granules = process_count if uses_dcn(cfg.mesh) else 1
    mesh_shape = resolve_mesh_shape(cfg.mesh, num_devices, num_granules)
    m, t = cfg.model, cfg.train

    if m.num_heads % m.num_kv_heads:
        raise ConfigError(f"model.num_heads={m.num_heads} is not a multiple of model.num_kv_heads="
                          f"{m.num_kv_heads}; pick num_kv_heads that divides num_heads")
    # Keys that only one family reads: set for another, they would be ignored silently (and block resuming).
    for key, value, family in (("model.type_vocab_size", m.type_vocab_size, "encoder"),
                               ("model.num_decoder_layers", m.num_decoder_layers, "encoder_decoder")):
        if value and m.family != family:
            raise ConfigError(f"{key}={value} is only read by model.family='{family}', not '{m.family}'; "
                              f"leave it at 0")
    if m.qkv_bias and m.use_bias:
        raise ConfigError("model.qkv_bias=True adds the query/key/value biases that model.use_bias=True already has; "
                          "set one of them")
    if cfg.objective.whole_word and cfg.objective.name not in ("", "masked_lm"):
        raise ConfigError(f"objective.whole_word is for masked_lm, not objective.name='{cfg.objective.name}'")
    if cfg.objective.whole_word and m.family != "encoder":
        raise ConfigError(f"objective.whole_word is for masked_lm (model.family='encoder'), not '{m.family}'")
    if m.positions == "relative" and m.family != "encoder_decoder":
        raise ConfigError(f"model.positions='relative' (T5's bias) is for model.family='encoder_decoder', not "
                          f"'{m.family}'; use rope or learned")
    if m.positions == "learned" and m.family == "encoder_decoder":
        raise ConfigError("model.family='encoder_decoder' takes model.positions='relative' (T5) or 'rope', not "
                          "'learned'")
    _check_attention(cfg)
    if m.positions == "rope" and m.head_dim % 2:
        raise ConfigError(f"model.head_dim={m.head_dim} must be even for rope positions")
    if t.seq_len > m.max_seq_len:
        raise ConfigError(f"train.seq_len={t.seq_len} is above the position limit model.max_seq_len="
                          f"{m.max_seq_len}; lower train.seq_len or raise model.max_seq_len")
    if t.global_batch % t.grad_accum:
        raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by train.grad_accum="
                          f"{t.grad_accum}; each micro-batch must hold the same number of sequences")
    micro = t.global_batch // t.grad_accum
    n, axes = shards_of(cfg, mesh_shape, "batch")
    if micro % n:
        raise ConfigError(f"train.global_batch={t.global_batch} (micro-batch {micro} with train.grad_accum="
                          f"{t.grad_accum}) is not divisible by {axes}={n}, the axes that shard the batch; "
                          f"make the micro-batch a multiple of {n}")
    if t.global_batch % process_count:
        raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by the {process_count} processes")
    _divides(cfg, mesh_shape, "model.num_heads", "heads")
    _divides(cfg, mesh_shape, "model.num_kv_heads", "kv_heads")
    _divides(cfg, mesh_shape, "model.mlp_dim", "mlp")
    _divides(cfg, mesh_shape, "model.vocab_size", "vocab")
    _divides(cfg, mesh_shape, "model.d_model", "embed")
    if cfg.data.corpus == "files" and not cfg.data.train_files:
        raise ConfigError("data.corpus='files' needs data.train_files, e.g. --config.data.train_files='data/*.jsonl'")
    if cfg.data.corpus == "prepared" and not cfg.data.prepared_dir:
        raise ConfigError("data.corpus='prepared' needs data.prepared_dir, the --out of `llm-jax data prepare`")
    if cfg.profile.steps and cfg.profile.start_step + cfg.profile.steps - 1 > t.steps:
        raise ConfigError(f"profile.start_step={cfg.profile.start_step} with profile.steps={cfg.profile.steps} goes "
                          f"past train.steps={t.steps}; trace earlier steps or fewer of them")
    return mesh_shape
