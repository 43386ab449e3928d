"""Every config key, declared once with its default.

Config files in `configs/` start from `base_config()` and only *change* values; a key that is not declared here is
an error. `validate()` in `validate.py` checks the combination before anything compiles.
"""

import ml_collections

# Logical axis -> mesh axis, in order of precedence. A mesh axis already used by an earlier dimension of the same
# array is skipped, so activations ('batch', 'length', 'embed') shard batch over (data, fsdp) and leave embed
# whole, while parameters ('vocab', 'embed') shard embed over fsdp (ZeRO-3) and vocab over tensor (Megatron).
DEFAULT_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("layers", None),
)


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model_preset = ""  # name of the preset applied by configs/train.py (recorded for the run)
    c.topology_preset = ""

    c.model = m = ml_collections.ConfigDict()
    m.vocab_size = 0  # 0: the tokenizer's size, rounded up to vocab_multiple
    m.vocab_multiple = 64  # padding so the vocab shards evenly over the tensor axis
    m.num_layers = 4
    m.d_model = 128
    m.num_heads = 4
    m.num_kv_heads = 0  # 0: same as num_heads (multi-head attention); fewer = grouped-query attention
    m.head_dim = 0  # 0: d_model // num_heads
    m.mlp_dim = 512
    m.max_seq_len = 256  # position limit (size of the learned table; the longest context for RoPE)
    m.norm = "rmsnorm"  # rmsnorm | layernorm
    m.norm_eps = 1e-5
    m.positions = "rope"  # rope | learned
    m.rope_theta = 10000.0
    m.mlp = "swiglu"  # swiglu | gelu
    m.tie_embeddings = True
    m.qk_norm = False
    m.init_std = 0.02
    m.dtype = "float32"  # compute dtype
    m.param_dtype = "float32"
    m.scan_layers = True
    m.remat = "none"  # none | full | dots

    # Each mesh axis is (ICI size) x (DCN size). ICI: devices inside one slice (TPU) or node (GPU) over the fast
    # interconnect; -1 = all the slice's devices the other axes leave. DCN: across slices or nodes (one process per
    # GPU node); -1 = all the slices/nodes the other DCN axes leave. Usually only data (or fsdp) crosses DCN.
    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.dcn_data = 1
    c.mesh.dcn_fsdp = 1
    c.mesh.dcn_tensor = 1
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = DEFAULT_RULES

    c.runtime = ml_collections.ConfigDict()
    c.runtime.num_cpu_devices = 0  # >0: split the host CPU into this many devices (tests, mesh rehearsal)
    c.runtime.xla_flags = ""  # added to XLA_FLAGS before JAX starts (topology presets set the recommended ones)
    c.runtime.libtpu_init_args = ""  # added to LIBTPU_INIT_ARGS before JAX starts (TPU compiler flags)
    # Multi-process (multi-host) runs: jax.distributed. auto: start it when JAX recognises a cluster (SLURM job,
    # TPU VM pod, Kubernetes indexed job, Open MPI) or a coordinator is given; on: always; off: one process.
    c.runtime.distributed = "auto"
    c.runtime.coordinator_address = ""  # host:port of process 0 (or env JAX_COORDINATOR_ADDRESS); "" = detect
    # Where process 0's coordination service listens. "": loopback when the coordinator address is a loopback
    # address (local rehearsals), all interfaces otherwise; or an explicit host:port / [::]:port.
    c.runtime.coordinator_bind_address = ""
    c.runtime.num_processes = 0  # 0: detect
    c.runtime.process_id = -1  # -1: detect
    c.runtime.init_timeout_s = 300  # how long to wait for every process to join
    c.runtime.heartbeat_timeout_s = 100  # a peer silent this long (dead or stopped) ends the job with an error
    c.runtime.step_timeout_s = 0.0  # >0: no step finishing for this long (a stuck peer or input) ends the process

    c.train = t = ml_collections.ConfigDict()
    t.steps = 800
    t.global_batch = 16  # sequences per optimizer step, over all devices and micro-batches
    t.per_device_batch = 0  # >0: global_batch = this x the number of devices (topology presets use it)
    t.seq_len = 128
    t.grad_accum = 1  # micro-batches per step; each holds global_batch / grad_accum sequences
    t.seed = 0
    t.log_every = 100
    t.eval_every = 0  # 0: evaluate only at the end
    t.eval_batches = 8
    t.z_loss = 0.0  # weight of log(Z)^2, keeps the softmax normaliser near 1
    # A step whose loss or gradients are NaN/Inf: stop (exit non-zero naming the step; nothing bad is saved) or
    # skip (keep the old parameters and optimizer state, count it, go on with the next batch)
    t.nan_policy = "stop"
    t.spike_k = 0.0  # >0: also skip an update whose loss is above mean + k * std of the last spike_window losses
    t.spike_window = 100
    t.max_skips_in_a_row = 10  # this many skipped updates in a row end the run (it is not recovering)

    c.optimizer = o = ml_collections.ConfigDict()
    o.lr = 2e-3
    o.schedule = "cosine"  # cosine (warmup + cosine) | constant | linear | wsd (warmup-stable-decay)
    o.warmup_steps = 50
    o.min_lr_ratio = 0.1  # final lr as a fraction of lr (cosine, linear, wsd)
    o.decay_fraction = 0.2  # wsd: the last fraction of steps that decays
    o.b1 = 0.9
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 0.1
    o.decay_embeddings = False  # norms and biases are never decayed
    o.clip_norm = 1.0  # global-norm clipping; 0 disables

    c.data = d = ml_collections.ConfigDict()
    d.corpus = "shakespeare"  # shakespeare (built in) | files | prepared (by `llm-jax data prepare`)
    # files: comma-separated paths or globs (local, or remote through etils.epath); several sources to mix are
    # separated by ';', e.g. 'web/*.jsonl;books/*.parquet'
    d.train_files = ""
    d.weights = ""  # mixture weights, one per ';'-separated source, e.g. '0.7,0.3'; empty: in proportion to size
    d.prepared_dir = ""  # prepared: the --out directory of `llm-jax data prepare`
    d.eval_files = ""  # files: the validation files; empty holds out every eval_holdout-th training document
    d.eval_holdout = 100
    d.format = "auto"  # auto (by extension) | text | jsonl | parquet | arrayrecord (a UTF-8 document per record)
    d.text_field = "text"  # JSONL field / Parquet column holding the text
    d.text_split = "file"  # plain text: one document per file, or per blank_line-separated block
    d.bad_utf8 = "replace"  # replace (U+FFFD, counted) | skip (drop the document, counted)
    d.bad_json = "fail"  # fail (report file:line) | skip (counted)
    d.tokenizer = "byte"  # byte (256 bytes + special tokens) | sentencepiece
    d.tokenizer_path = ""  # sentencepiece: the .model file written by `llm-jax tokenizer train`
    d.packing = "concat"  # concat (no padding) | best_fit (fewer documents cut) | pad (one piece per row)
    d.workers = 0  # grain worker processes that read, tokenize and batch; 0: all in the training process
    d.threads = 2  # reader threads per process
    d.prefetch = 8  # batches read ahead per process

    c.checkpoint = k = ml_collections.ConfigDict()
    k.every_steps = 200  # save every N steps (and at the end); 0: only at the end
    k.every_minutes = 0.0  # also save when this many minutes passed since the last save; 0: off
    k.keep = 3  # the last K checkpoints are kept ...
    k.keep_every = 0  # ... plus every M-th step for good; 0: none
    k.async_save = True  # write in the background while training goes on
    # A new run (no checkpoint in its workdir yet) starts from these parameters, with a fresh optimizer: another
    # run's workdir (its latest checkpoint), a checkpoints/<step> directory, or a file from `llm-jax export`
    k.init_from = ""

    c.sample = s = ml_collections.ConfigDict()
    s.prompt = "ROMEO:\n"
    s.max_new_tokens = 200
    s.temperature = 0.7  # 0: greedy
    s.top_k = 0  # >0: sample among the k most likely tokens only
    s.top_p = 1.0  # <1: sample among the most likely tokens whose probabilities sum to top_p (nucleus)
    s.seed = 0
    s.every_steps = 0  # also write a sample to TensorBoard every N steps; 0: only at the end

    c.monitor = mo = ml_collections.ConfigDict()
    # Peak FLOP/s per device for MFU, in TFLOP/s. 0: from the table of known accelerators in monitor/flops.py;
    # on CPUs (whose speed varies too much for a table) a matmul in the compute dtype is timed at start-up.
    mo.peak_tflops = 0.0
    mo.progress = "auto"  # auto: a live progress bar when stdout is a terminal, plain lines otherwise | plain

    c.profile = pr = ml_collections.ConfigDict()
    pr.steps = 0  # >0: capture a jax.profiler trace of this many steps into <workdir>/tensorboard (profile tab)
    pr.start_step = 5  # the first step traced; the steps before it compile and warm up
    return c
