"""Every config key, declared once: its default, what it means, and the values it allows.

Config files in `configs/` start from `base_config()` and only *change* values; a key that is not declared here is
an error. `validate()` in `validate.py` checks every value against its declaration here (type, choices, range,
finiteness) and then the combination, before anything compiles. `key(default, help, choices, gt=, ge=, lt=, le=)`
is in `schema.py`.
"""

import ml_collections

from llm_jax.config.schema import Key, Section, key

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
DTYPES = ("float32", "bfloat16", "float16")


def _schema() -> Section:
    c = Section()
    c.model_preset = key("", "name of the preset applied by configs/train.py (recorded for the run)")
    c.topology_preset = key("", "name of the topology preset applied by configs/train.py")

    c.model = m = Section()
    m.family = key("decoder", "decoder (GPT, Llama) | encoder (BERT) | encoder_decoder (T5); see models/families.py",
                   ("decoder", "encoder", "encoder_decoder"))
    m.vocab_size = key(0, "vocabulary size; 0: the tokenizer's size, rounded up to vocab_multiple; token ids are "
                          "int32", ge=0, lt=2**31)
    m.vocab_multiple = key(64, "padding so the vocab shards evenly over the tensor axis", gt=0)
    m.num_layers = key(4, "transformer blocks (of the encoder, for encoder_decoder)", gt=0)
    m.num_decoder_layers = key(0, "encoder_decoder: decoder blocks; 0: num_layers", ge=0)
    m.d_model = key(128, "width of the residual stream", gt=0)
    m.num_heads = key(4, "attention (query) heads", gt=0)
    m.num_kv_heads = key(0, "key/value heads; 0: same as num_heads (multi-head attention); fewer = grouped-query "
                            "attention", ge=0)
    m.head_dim = key(0, "width of one head; 0: d_model // num_heads", ge=0)
    m.mlp_dim = key(512, "hidden width of the MLP", gt=0)
    m.max_seq_len = key(256, "position limit (size of the learned table; the longest context for RoPE)", gt=0)
    m.norm = key("rmsnorm", "normalisation layer", ("rmsnorm", "layernorm"))
    m.norm_eps = key(1e-5, "epsilon added in the norms", gt=0)
    m.positions = key("rope", "position encoding: rope | learned (a table) | relative (T5's bucketed bias)",
                      ("rope", "learned", "relative"))
    m.relative_buckets = key(32, "relative: buckets of the position bias (half per direction when bidirectional)",
                             gt=1)
    m.relative_max_distance = key(128, "relative: distances from here on share the last bucket", gt=1)
    m.type_vocab_size = key(0, "encoder: token-type (sentence A/B) embeddings, 2 in BERT; 0: none", ge=0)
    m.norm_position = key("pre", "pre: norm before each sublayer (GPT-2, Llama, T5) | post: after the residual "
                                 "add (BERT)", ("pre", "post"))
    m.use_bias = key(False, "biases in the attention and MLP projections (BERT, GPT-2)")
    m.qkv_bias = key(False, "biases in the query, key and value projections only (Qwen2); use_bias has them too")
    m.rope_theta = key(10000.0, "RoPE base wavelength", gt=0)
    m.rope_scaling = key("none", "none | llama3 (Llama 3.1's frequency scaling for long contexts)", ("none", "llama3"))
    m.rope_scaling_factor = key(8.0, "llama3: how much the long wavelengths are stretched", gt=0)
    m.rope_low_freq_factor = key(1.0, "llama3: wavelengths above original_max_len / this are scaled", gt=0)
    m.rope_high_freq_factor = key(4.0, "llama3: wavelengths below original_max_len / this are kept", gt=0)
    m.rope_original_max_len = key(8192, "llama3: the context length the model was first trained for", gt=0)
    m.mlp = key("swiglu", "MLP kind: swiglu (Llama) | geglu (T5 v1.1) | gelu (tanh approximation, GPT-2) | "
                          "gelu_exact (erf, BERT) | relu (the original T5)", ("swiglu", "geglu", "gelu", "gelu_exact",
                                                                              "relu"))
    m.tie_embeddings = key(True, "the output projection is the transposed input embedding")
    m.qk_norm = key(False, "normalise queries and keys before attention")
    m.init_std = key(0.02, "standard deviation of the initial weights", gt=0)
    m.dtype = key("float32", "compute dtype", DTYPES)
    m.param_dtype = key("float32", "dtype the parameters (and optimizer state) are stored in", DTYPES[:2])
    m.grad_reduce_dtype = key("float32", "dtype the layers' weight gradients leave their matmuls in, and so are "
                              "summed across devices in (FSDP's reduce-scatter, data parallelism's all-reduce); "
                              "bfloat16 halves those bytes at some precision", DTYPES[:2])
    m.scan_layers = key(True, "one scanned block instead of num_layers unrolled ones (faster compiles)")
    m.remat = key("none", "rematerialise activations in the backward pass", ("none", "full", "dots"))
    # How the attention core is computed (models/attention.py); every choice respects packed documents' segment ids.
    m.attention = key("auto", "auto (splash on TPU, cudnn on GPU with bf16/f16, else xla or chunked by length) | "
                              "xla (scores whole) | chunked (blockwise, no [L, S] scores) | cudnn | splash",
                      ("auto", "xla", "chunked", "cudnn", "splash"))
    m.attention_block_q = key(512, "chunked / splash: queries per block", gt=0)
    m.attention_block_kv = key(512, "chunked / splash: keys per block", gt=0)
    # Measured on a 2-core CPU, 8 heads of 64, forward + backward: chunked is 0.76x xla at 512 keys, 2.1x at 1024,
    # 3.2x at 2048, 3.9x at 4096 (docs/performance.md).
    m.attention_chunked_from = key(1024, "auto on CPU (and GPU with f32): chunked from this many keys on", gt=0)

    # Each mesh axis is (ICI size) x (DCN size). ICI: devices inside one slice (TPU) or node (GPU) over the fast
    # interconnect; -1 = all the slice's devices the other axes leave. DCN: across slices or nodes (one process per
    # GPU node); -1 = all the slices/nodes the other DCN axes leave. Usually only data (or fsdp) crosses DCN.
    c.mesh = mesh = Section()
    mesh.data = key(-1, "data-parallel devices per slice/node; -1: the rest", ge=-1)
    mesh.fsdp = key(1, "devices that shard parameters and optimizer state (ZeRO-3) per slice/node; -1: the rest",
                    ge=-1)
    mesh.tensor = key(1, "tensor-parallel (Megatron) devices per slice/node; -1: the rest", ge=-1)
    mesh.dcn_data = key(1, "data-parallel slices/nodes; -1: the rest", ge=-1)
    mesh.dcn_fsdp = key(1, "slices/nodes that shard parameters; -1: the rest", ge=-1)
    mesh.dcn_tensor = key(1, "tensor-parallel slices/nodes; -1: the rest", ge=-1)
    c.sharding = sh = Section()
    sh.rules = key(DEFAULT_RULES, "(logical axis, mesh axes) pairs, in order of precedence")

    c.runtime = r = Section()
    r.num_cpu_devices = key(0, ">0: split the host CPU into this many devices (tests, mesh rehearsal)", ge=0)
    r.xla_flags = key("", "added to XLA_FLAGS before JAX starts (topology presets set the recommended ones)")
    r.libtpu_init_args = key("", "added to LIBTPU_INIT_ARGS before JAX starts (TPU compiler flags)")
    # A restarted job, a resumed run or a sweep's next variant compiles the same programs again: minutes at scale.
    r.compilation_cache_dir = key("", "persistent compilation cache: compiled programs are kept in this directory "
                                      "(~ expanded; a gs:// path works on TPU VMs) and reused by later runs; '': off")
    r.compilation_cache_min_compile_s = key(1.0, "only programs that took this long to compile are kept", ge=0)
    # Multi-process (multi-host) runs: jax.distributed. auto: start it when JAX recognises a cluster (SLURM job,
    # TPU VM pod, Kubernetes indexed job, Open MPI) or a coordinator is given; on: always; off: one process.
    r.distributed = key("auto", "start jax.distributed (multi-process)", ("auto", "on", "off"))
    r.coordinator_address = key("", "host:port of process 0 (or env JAX_COORDINATOR_ADDRESS); '': detect")
    # "": loopback when the coordinator address is a loopback address (local rehearsals), all interfaces
    # otherwise; or an explicit host:port / [::]:port.
    r.coordinator_bind_address = key("", "where process 0's coordination service listens; '': loopback for a "
                                         "loopback coordinator, all interfaces otherwise")
    r.num_processes = key(0, "processes in the job; 0: detect", ge=0)
    r.process_id = key(-1, "this process's index; -1: detect", ge=-1)
    r.init_timeout_s = key(300, "how long to wait for every process to join", gt=0)
    r.heartbeat_timeout_s = key(100, "a peer silent this long (dead or stopped) ends the job with an error", gt=0)
    r.step_timeout_s = key(0.0, ">0: no step finishing for this long (a stuck peer or input) ends the process",
                           ge=0)

    c.train = t = Section()
    t.steps = key(800, "optimizer steps to train", gt=0)
    t.global_batch = key(16, "sequences per optimizer step, over all devices and micro-batches", gt=0)
    t.per_device_batch = key(0, ">0: global_batch = this x the number of devices (topology presets use it)", ge=0)
    t.seq_len = key(128, "tokens per training sequence", gt=0)
    t.grad_accum = key(1, "micro-batches per step; each holds global_batch / grad_accum sequences", gt=0)
    t.seed = key(0, "seed of the initial parameters and the data order", ge=0)
    t.log_every = key(100, "log training metrics every N steps", gt=0)
    t.eval_every = key(0, "evaluate every N steps; 0: only at the end", ge=0)
    t.eval_batches = key(8, "validation batches per evaluation", gt=0)
    t.z_loss = key(0.0, "weight of log(Z)^2, keeps the softmax normaliser near 1", ge=0)
    # The float32 logits of a micro-batch, [B, seq_len, vocab], and their gradient are often the largest activation
    # of the step (a 128k vocabulary outweighs a whole residual stream per layer); in chunks they never exist whole.
    t.loss_chunk = key(0, ">0: the loss (in training and evaluation) makes the float32 logits this many sequence "
                          "positions at a time, [batch, loss_chunk, vocab], and remakes them in the backward pass; "
                          "best a divisor of the sequence length (else the last chunk is padded); 0: whole logits",
                       ge=0)
    # stop: exit non-zero naming the step, nothing bad is saved; skip: keep the old parameters and optimizer
    # state, count it, go on with the next batch.
    t.nan_policy = key("stop", "what a step whose loss or gradients are NaN/Inf does", ("stop", "skip"))
    t.spike_k = key(0.0, ">0: also skip an update whose loss is above mean + k * std of the last spike_window "
                         "losses", ge=0)
    t.spike_window = key(100, "losses that the spike check compares with", gt=0)
    t.max_skips_in_a_row = key(10, "this many skipped updates in a row end the run (it is not recovering)", gt=0)

    # What the model learns to predict from each packed row; objectives/<name>.py says how the row is turned into
    # an example (inputs, targets, loss weights) and which families can learn it.
    c.objective = ob = Section()
    ob.name = key("", "'': the family's default | causal_lm | prefix_lm | masked_lm | span_corruption",
                  ("", "causal_lm", "prefix_lm", "masked_lm", "span_corruption"))
    ob.mask_rate = key(0.15, "masked_lm: fraction of the (non-special) tokens to predict", gt=0, lt=1)
    ob.mask_token_frac = key(0.8, "masked_lm: of those, the fraction replaced by [MASK]", ge=0, le=1)
    ob.random_token_frac = key(0.1, "masked_lm: ... the fraction replaced by a random token (the rest stay)",
                               ge=0, le=1)
    ob.whole_word = key(False, "masked_lm: mask whole words (needs data.tokenizer=sentencepiece)")
    ob.noise_density = key(0.15, "span_corruption: fraction of each document's tokens to corrupt", gt=0, lt=1)
    ob.mean_span = key(3.0, "span_corruption: mean length of a corrupted span", ge=1)

    c.optimizer = o = Section()
    o.lr = key(2e-3, "peak learning rate", gt=0)
    o.schedule = key("cosine", "cosine (warmup + cosine) | constant | linear | wsd (warmup-stable-decay)",
                     ("cosine", "constant", "linear", "wsd"))
    o.warmup_steps = key(50, "linear warmup steps (more than train.steps is allowed: a smoke run just warms up)",
                         ge=0)
    o.min_lr_ratio = key(0.1, "final lr as a fraction of lr (cosine, linear, wsd)", ge=0, le=1)
    o.decay_fraction = key(0.2, "wsd: the last fraction of steps that decays", gt=0, le=1)
    o.b1 = key(0.9, "Adam's first-moment decay rate", ge=0, lt=1)
    o.b2 = key(0.95, "Adam's second-moment decay rate", ge=0, lt=1)
    o.eps = key(1e-8, "Adam's epsilon; 0 would divide zero gradients by zero", gt=0)
    o.weight_decay = key(0.1, "AdamW's decoupled weight decay", ge=0)
    o.decay_embeddings = key(False, "also decay the embeddings (norms and biases are never decayed)")
    o.clip_norm = key(1.0, "global-norm gradient clipping; 0 disables", ge=0)

    c.data = d = Section()
    d.corpus = key("shakespeare", "shakespeare (built in) | files | prepared (by `llm-jax data prepare`)",
                   ("shakespeare", "files", "prepared"))
    d.train_files = key("", "files: comma-separated paths or globs (local, or remote through etils.epath); several "
                            "sources to mix are separated by ';', e.g. 'web/*.jsonl;books/*.parquet'")
    d.weights = key("", "mixture weights, one per ';'-separated source, e.g. '0.7,0.3'; empty: in proportion to "
                        "size")
    d.prepared_dir = key("", "prepared: the --out directory of `llm-jax data prepare`, or several separated by ';' "
                             "(their sources mixed by data.weights, their validation rows together)")
    d.eval_files = key("", "files: the validation files; empty holds out every eval_holdout-th training document")
    d.eval_holdout = key(100, "every N-th training document goes to validation (when eval_files is empty)", ge=2)
    d.format = key("auto", "auto (by extension) | text | jsonl | parquet | arrayrecord (a UTF-8 document per "
                           "record)", ("auto", "text", "jsonl", "parquet", "arrayrecord"))
    d.text_field = key("text", "JSONL field / Parquet column holding the text")
    d.text_split = key("file", "plain text: one document per file, or per blank_line-separated block",
                       ("file", "blank_line"))
    d.bad_utf8 = key("replace", "replace (U+FFFD, counted) | skip (drop the document, counted)",
                     ("replace", "skip"))
    d.bad_json = key("fail", "fail (report file:line) | skip (counted)", ("fail", "skip"))
    d.tokenizer = key("byte", "byte (256 bytes + special tokens) | sentencepiece | hf (a Hugging Face tokenizer.json)",
                      ("byte", "sentencepiece", "hf"))
    d.tokenizer_path = key("", "sentencepiece: the .model file written by `llm-jax tokenizer train`; hf: a "
                               "tokenizer.json or the directory holding it")
    d.packing = key("concat", "concat (no padding) | best_fit (fewer documents cut) | pad (one piece per row)",
                    ("concat", "best_fit", "pad"))
    d.workers = key(0, "grain worker processes that read, tokenize and batch; 0: all in the training process",
                    ge=0)
    d.threads = key(2, "reader threads per process", ge=0)
    d.prefetch = key(8, "batches read ahead per process", gt=0)

    c.checkpoint = k = Section()
    k.every_steps = key(200, "save every N steps (and at the end); 0: only at the end", ge=0)
    k.every_minutes = key(0.0, "also save when this many minutes passed since the last save; 0: off", ge=0)
    k.keep = key(3, "the last K checkpoints are kept ...", gt=0)
    k.keep_every = key(0, "... plus every M-th step for good; 0: none", ge=0)
    k.async_save = key(True, "write in the background while training goes on")
    # Another run's workdir (its latest checkpoint), a checkpoints/<step> directory, or a file from `llm-jax export`.
    k.init_from = key("", "a new run (no checkpoint in its workdir yet) starts from these parameters, with a fresh "
                          "optimizer")

    c.sample = s = Section()
    s.prompt = key("ROMEO:\n", "text the end-of-run sample continues")
    s.max_new_tokens = key(200, "tokens to generate", ge=0)
    s.temperature = key(0.7, "sampling temperature; 0: greedy", ge=0)
    s.top_k = key(0, ">0: sample among the k most likely tokens only", ge=0)
    s.top_p = key(1.0, "<1: sample among the most likely tokens whose probabilities sum to top_p (nucleus)",
                  gt=0, le=1)
    s.seed = key(0, "sampling seed", ge=0)
    s.every_steps = key(0, "also write a sample to TensorBoard every N steps; 0: only at the end", ge=0)

    c.monitor = mo = Section()
    # 0: from the table of known accelerators in monitor/flops.py; on CPUs (whose speed varies too much for a
    # table) a matmul in the compute dtype is timed at start-up.
    mo.peak_tflops = key(0.0, "peak TFLOP/s per device for MFU; 0: from the table of known accelerators", ge=0)
    mo.progress = key("auto", "auto: a live progress bar when stdout is a terminal, plain lines otherwise | plain",
                      ("auto", "plain"))

    c.profile = pr = Section()
    pr.steps = key(0, ">0: capture a jax.profiler trace of this many steps into <workdir>/tensorboard", ge=0)
    pr.start_step = key(5, "the first step traced; the steps before it compile and warm up", gt=0)
    return c


SCHEMA: Section = _schema()
KEYS: dict[str, Key] = SCHEMA.keys()  # every key's declaration, by dotted name


def base_config() -> ml_collections.ConfigDict:
    return SCHEMA.config()
