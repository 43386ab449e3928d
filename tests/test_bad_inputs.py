"""Bad input to any command ends with exit 2 and one line on stderr naming the key, file or value: no traceback.

Each case runs `llm_jax.cli.main(argv)` in this process; every case fails before anything trains or compiles.
"""

import pathlib

import pytest

from llm_jax.cli import main
from tests.conftest import TRAIN_CONFIG

CFG = f"--config={TRAIN_CONFIG}:model=tiny,topology=cpu"
FILES = "--config.data.corpus=files"


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> pathlib.Path:
    """Bad (and a few good) input files."""
    d = tmp_path_factory.mktemp("bad_inputs")
    (d / "empty.jsonl").write_text('{"text": ""}\n' * 300)  # every document empty
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{oops\n')  # line 2 is not JSON
    (d / "text.txt").write_text("some text to read\n" * 50)
    (d / "four.safetensors").write_bytes(b"\x01\x02\x03\x04")  # shorter than the 8-byte header length
    (d / "prep").mkdir()
    (d / "prep" / "meta.json").write_text('{"tokenizer": {"kind"')  # cut off mid-write
    return d


CASES = [  # (argv with {d} for the fixture directory, what the one line must contain)
    # train: config keys, their ranges (each passed silently before) and files
    (["train", CFG, "--workdir={w}", "--config.train.stepz=3"], "train.stepz"),
    (["train", "--config={d}/missing.py", "--workdir={w}"], "missing.py"),
    (["train", CFG], "--workdir"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.b1=1.5"], "optimizer.b1=1.5"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.b2=-3"], "optimizer.b2=-3"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.eps=-1"], "optimizer.eps=-1"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.weight_decay=-5"], "optimizer.weight_decay=-5"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.clip_norm=-1"], "optimizer.clip_norm=-1"),
    (["train", CFG, "--workdir={w}", "--config.model.init_std=-1"], "model.init_std=-1"),
    (["train", CFG, "--workdir={w}", "--config.model.norm_eps=-1"], "model.norm_eps=-1"),
    (["train", CFG, "--workdir={w}", "--config.model.rope_theta=0"], "model.rope_theta=0"),
    (["train", CFG, "--workdir={w}", "--config.train.eval_every=-3"], "train.eval_every=-3"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.lr=1e999"], "optimizer.lr=inf"),
    (["train", CFG, "--workdir={w}", "--config.model.vocab_size=17179869184"], "model.vocab_size=17179869184"),
    (["train", CFG, "--workdir={w}", "--config.optimizer.lr=nan"], "optimizer.lr=nan"),
    (["train", CFG, "--workdir={d}/text.txt"], "text.txt is a file, not a directory"),
    # a million layers: refused from the config's sizes, before a module is built (that alone took gigabytes)
    (["train", CFG, "--workdir={w}", "--config.model.num_layers=1000000"], "model.num_layers=1000000"),
    # a batch whose activations alone need terabytes (it allocated 18 GB before it was refused)
    (["train", CFG, "--workdir={w}", "--config.train.global_batch=99999999999"], "train.global_batch"),
    # a vocabulary that int32 ids can hold, but whose embedding alone is ~8 TiB: refused with the estimate
    (["train", CFG, "--workdir={w}", "--config.model.vocab_size=2147483584", "--config.model.d_model=1024",
      "--config.model.num_heads=8"], "GiB"),
    (["train", CFG, "--workdir={w}", FILES, "--config.data.train_files={d}/empty.jsonl"], "empty.jsonl"),
    (["train", CFG, "--workdir={w}", "--config.data.corpus=prepared", "--config.data.prepared_dir={d}/prep"],
     "meta.json"),
    # eval / sample / export: missing or broken checkpoints
    (["eval", "--workdir={d}/no_run"], "no_run"),
    (["eval", "--workdir={d}/four.safetensors"], "four.safetensors"),
    (["eval"], "--workdir"),
    (["sample", "--workdir={d}/no_run"], "no_run"),
    (["sample", "--workdir={d}/no_run", "--top-p=3"], "--top-p"),
    (["export", "--workdir={d}/no_run", "--out={d}/x.safetensors"], "no_run"),
    # data: input files that are missing, malformed or empty
    (["data", "prepare", CFG, "--out={d}/p", FILES, "--config.data.train_files={d}/missing*.jsonl"],
     "missing*.jsonl"),
    (["data", "prepare", CFG, "--out={d}/p", FILES, "--config.data.train_files={d}/bad.jsonl"], "bad.jsonl:2"),
    (["data", "prepare", CFG, "--out={d}/p", FILES, "--config.data.train_files={d}/bad.jsonl",
      "--config.data.workers=2"], "bad.jsonl:2"),  # raised in a worker process
    (["data", "prepare", CFG, "--out={d}/p", FILES, "--rows-per-shard=0"], "--rows-per-shard"),
    (["data", "prepare", CFG, "--out={d}/p", FILES, "--config.data.train_files={d}/empty.jsonl",
      "--config.data.eval_files={d}/text.txt"], "empty.jsonl"),
    (["data", "prepare", CFG, "--out={d}/p", FILES, "--config.data.train_files={d}/text.txt",
      "--config.data.eval_files={d}/empty.jsonl"], "empty.jsonl"),
    (["data", "bogus"], "bogus"),
    (["data", "bench", CFG, "--config.model.norm=batchnorm"], "model.norm='batchnorm'"),
    # tokenizer
    (["tokenizer", "train", "--input={d}/text.txt", "--vocab-size=-5", "--out={d}/tok"], "--vocab-size=-5"),
    (["tokenizer", "train", "--input={d}/missing.txt", "--vocab-size=300", "--out={d}/tok"], "missing.txt"),
    (["tokenizer", "encode", "--tokenizer={d}/missing.model", "hi"], "missing.model"),
    # sweep
    (["sweep", "run", "{d}/missing_experiment.py"], "missing_experiment.py"),
    (["sweep", "report", "{d}/missing_experiment.py"], "missing_experiment.py"),
    (["sweep", "run", "experiments/norm.py", "--root={d}/runs", "--config.train.stepz=1"], "train.stepz"),
    # plan, bench, config, and the command itself
    (["plan", CFG, "--config.optimizer.b1=1.5"], "optimizer.b1=1.5"),
    (["plan", CFG, "--devices=3"], "train.global_batch=16"),
    (["plan", CFG, "--devices=0"], "--devices must be at least 1"),
    (["plan", CFG, "--devices=-8"], "--devices must be at least 1"),
    (["plan", CFG, "--hbm-gib=-1"], "--hbm-gib must be a positive"),
    (["plan", CFG, "--device-kind=cpu", "--config.model.attention=cudnn", "--config.model.dtype=bfloat16"],
     "model.attention=cudnn runs on GPUs"),
    (["plan", CFG, "--device-kind=h100", "--config.model.attention=splash"], "model.attention=splash runs on TPUs"),
    (["data", "stats", "{d}/no_such_dir"], "no_such_dir"),
    (["data", "stats"], "directory"),
    (["bench", CFG, "--config.train.stepz=1"], "train.stepz"),
    (["bench", CFG, "--steps=abc"], "--steps"),
    (["bench", CFG, "--steps=0"], "--steps"),
    (["config", "--config.model.norm_eps=nan"], "model.norm_eps"),
    (["bogus"], "bogus"),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(a[:1] + a[2:])[:80] for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(argv, expected, fx, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(pathlib.Path(TRAIN_CONFIG).parents[1])  # experiments/... relative to the repository
    if argv[0] == "train" and CFG in argv:  # should a bad config get through, it trains one step, not 800
        argv = [*argv, "--config.train.steps=1", "--config.sample.max_new_tokens=0"]
    code = main([a.format(d=fx, w=tmp_path / "w") for a in argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert "Traceback" not in err + out
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-2000:]}"
    assert expected.format(d=fx) in lines[0], lines[0]
    assert not list(tmp_path.glob("w/checkpoints/[0-9]*")) and not (tmp_path / "w" / "metrics.jsonl").exists(), \
        "a refused run must not start"


def test_the_memory_estimate_is_what_training_allocates_on_a_device():
    """The refusal above rests on this count: parameters + optimizer state on one device of a 2x2x2 mesh."""
    import jax

    from llm_jax.train.fits import state_bytes
    from llm_jax.train.setup import optimizer_and_options, prepare
    from llm_jax.train.state import create_train_state
    from tests.conftest import small_config

    cfg = small_config()
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 2, 2, 2
    cfg, mesh, model, _, params_sh, objective = prepare(cfg)
    tx, options = optimizer_and_options(cfg, objective)
    count, estimate = state_bytes(model, cfg.train.seq_len, tx, params_sh)
    rules = tuple(tuple(r) for r in cfg.sharding.rules)
    state, _ = create_train_state(model, tx, options, 0, cfg.train.seq_len, mesh, rules, params_sh)
    device = mesh.devices.flat[0]
    on_device = [s.data.nbytes for leaf in jax.tree.leaves((state.params, state.opt_state))
                 for s in leaf.addressable_shards if s.device == device]
    assert count == sum(p.size for p in jax.tree.leaves(state.params))
    assert estimate == sum(on_device), f"estimated {estimate} bytes, device 0 holds {sum(on_device)}"


@pytest.mark.parametrize("changes", [{}, {"mlp": "gelu", "tie_embeddings": False, "positions": "learned"},
                                     {"num_kv_heads": 2, "head_dim": 8, "scan_layers": True}])
def test_the_size_counted_from_the_config_is_the_models_own(changes):
    """The refusal of a model too big to build rests on this count: the built model's parameters, norms aside."""
    import flax.linen as nn
    import jax

    from llm_jax.train.fits import param_count_from_config
    from llm_jax.train.setup import prepare
    from llm_jax.train.state import abstract_params
    from tests.conftest import small_config

    cfg = small_config()
    for k, v in changes.items():
        cfg.model[k] = v
    cfg, _, model, *_ = prepare(cfg, jax.devices()[:1])
    leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(abstract_params(model, cfg.train.seq_len)))[0]
    counted = sum(x.size for path, x in leaves if "norm" not in jax.tree_util.keystr(path))
    assert param_count_from_config(cfg.model) == counted
