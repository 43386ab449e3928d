"""The launch scripts: each dry run prints its commands and calls no cluster tool; every `llm-jax train` command
they print (or put in a manifest) is one the CLI accepts and fits the hardware it is meant for; without DRY_RUN they
run exactly what the dry run printed. (A real 2 x 4-device job through launch/local.sh: test_multihost.py.)"""

import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

from llm_jax.cli_parse import config_parser as _config_parser
from llm_jax.config import ConfigError, load_config, validate
from llm_jax.config.validate import finalize
from tests.conftest import REPO
from tests.test_cli import SMALL

CLUSTER_TOOLS = ("gcloud", "kubectl", "sbatch", "srun", "docker")
TRAIN_CONFIG_PATH = "configs/train.py"  # the scripts run from the repository root (or /app in the image)
RUNTIME_VARIABLES = {"JOB_COMPLETION_INDEX": "0"}  # set by Kubernetes in each pod; any index will do here
BYTE_VOCAB = 259

# name: (script under launch/, its arguments, environment, the hardware its train commands are for: devices,
# processes, DCN granules (GPU nodes, TPU slices); None: the case prints no train command)
CASES = {
    "local": ("local.sh", ["--", f"--config={TRAIN_CONFIG_PATH}:model=tiny,topology=cpu", "--workdir=runs/x"], {},
              (1, 1, 1)),
    "local-2x4": ("local.sh", ["--", f"--config={TRAIN_CONFIG_PATH}:model=tiny,topology=cpu", "--workdir=runs/x",
                               *SMALL], {"NPROC": "2", "DEVICES_PER_PROC": "4", "PORT": "23456"}, (8, 2, 1)),
    "slurm": ("slurm.sbatch", ["--config.train.steps=1000"], {}, (16, 2, 2)),
    "slurm-4-nodes": ("slurm.sbatch", [], {"NODES": "4", "MODEL": "llama_1b"}, (32, 4, 4)),
    "slurm-in-job": ("slurm.sbatch", [], {"SLURM_JOB_ID": "7", "SLURM_NNODES": "3", "SLURM_JOB_NODELIST": "n[1-3]"},
                     (24, 3, 3)),
    "tpu-create": ("tpu_vm.sh", ["create"], {}, None),
    "tpu-setup": ("tpu_vm.sh", ["setup"], {}, None),
    "tpu-train": ("tpu_vm.sh", ["train", "--config.train.steps=100"], {}, (64, 16, 1)),
    "tpu-stop": ("tpu_vm.sh", ["stop"], {}, None),
    "tpu-delete": ("tpu_vm.sh", ["delete"], {}, None),
    "tpu-multislice-create": ("tpu_vm.sh", ["create"], {"SLICES": "2"}, None),
    "tpu-multislice-setup": ("tpu_vm.sh", ["setup"], {"SLICES": "2", "REPO_URL": "https://example.com/x.git"}, None),
    "tpu-multislice-train": ("tpu_vm.sh", ["train"], {"SLICES": "2", "DETACH": "1"}, (128, 32, 2)),
    "k8s-gpu": ("k8s/render.sh", ["gpu", "--config.train.steps=100"], {}, (16, 2, 2)),
    "k8s-gpu-h100-nodes": ("k8s/render.sh", ["gpu"], {"NODES": "4", "TOPOLOGY": "h100_8"}, (32, 4, 4)),
    "k8s-tpu": ("k8s/render.sh", ["tpu"], {}, (64, 16, 1)),
    "k8s-tpu-multislice": ("k8s/render.sh", ["tpu", "--config.sample.prompt=It's me"], {"SLICES": "2"},
                           (128, 32, 2)),
}
TRAINS = sorted(name for name, case in CASES.items() if case[3] is not None)


def _env(tmp_path, **extra) -> dict:
    """A clean environment (none of the scripts' variables, no XLA_FLAGS: the CLI sets up its devices itself) whose
    PATH starts with stubs of the cluster tools that record how they were called."""
    stubs = tmp_path / "stubs"
    if not stubs.exists():
        stubs.mkdir()
        for tool in CLUSTER_TOOLS:
            stub = stubs / tool
            stub.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                            "call = {'argv': [os.path.basename(sys.argv[0]), *sys.argv[1:]]}\n"
                            "if call['argv'][0] == 'kubectl':\n    call['stdin'] = sys.stdin.read()\n"
                            "with open(os.environ['STUB_LOG'], 'a') as f:\n    f.write(json.dumps(call) + '\\n')\n")
            stub.chmod(0o755)
    return {"PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "HOME": os.environ.get("HOME", str(tmp_path)),
            "JAX_PLATFORMS": "cpu", "TMPDIR": str(tmp_path), "STUB_LOG": str(tmp_path / "calls.jsonl"), **extra}


def _launch(script, args, env, tmp_path, launch_dir=REPO / "launch", dry=True,
            timeout=60) -> subprocess.CompletedProcess:
    env = _env(tmp_path, **env, **({"DRY_RUN": "1"} if dry else {}))
    return subprocess.run(["bash", str(launch_dir / script), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def _calls(tmp_path) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _is_operator(token: str) -> bool:
    return bool(re.fullmatch(r"[0-9]*[<>|&;].*|\)|\}", token))


def k8s_expand(value: str, env: dict[str, str]) -> str:
    """What the kubelet does to a container's command and args: `$(NAME)` of a variable in the container's
    environment becomes its value, `$$` becomes `$`, anything else is kept."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif (m := re.match(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value[i:])) and m.group(1) in env:
            out.append(env[m.group(1)])
            i += m.end()
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def k8s_argvs(manifest: str, env: dict[str, str] = RUNTIME_VARIABLES) -> list[list[str]]:
    """The argv each container of a rendered JobSet runs (`bash -c SCRIPT NAME ARGS...` kept as it is)."""
    jobset = yaml.safe_load(manifest)
    return [[k8s_expand(a, env) for a in container["command"] + container.get("args", [])]
            for job in jobset["spec"]["replicatedJobs"]
            for container in job["template"]["spec"]["template"]["spec"]["containers"]]


def _k8s_train_commands(manifest: str) -> list[list[str]]:
    commands = []
    for argv in k8s_argvs(manifest, {}):
        if argv[:2] == ["bash", "-c"]:  # the script's "$@" is the list items after $0
            script = shlex.split(argv[2])
            at = script.index("$@")
            argv = script[:at] + argv[4:] + script[at + 1:]
        start = next(i + 3 for i in range(len(argv)) if argv[i:i + 3] == ["-m", "llm_jax", "train"])
        commands.append(argv[start:])
    return commands


def train_commands(text: str) -> list[list[str]]:
    """Every `llm-jax train` / `python -m llm_jax train` argument list in shell text (dry-run output), including
    commands quoted inside another command (gcloud --command=..., bash -c ...), or in a JobSet manifest."""
    if re.search(r"^kind: JobSet$", text, re.MULTILINE):
        return _k8s_train_commands(text)
    commands = []

    def scan(tokens: list[str]) -> None:
        for i, token in enumerate(tokens):
            if re.search(r"\s", token) and re.search(r"llm[-_]jax train", token):  # e.g. gcloud --command=...
                scan(shlex.split(token.partition("=")[2] if token.startswith("--") else token))
            start = None
            if (token == "llm-jax" or token.endswith("/llm-jax")) and tokens[i + 1:i + 2] == ["train"]:
                start = i + 2
            elif token == "-m" and tokens[i + 1:i + 3] == ["llm_jax", "train"]:
                start = i + 3
            if start is not None:
                end = next((j for j in range(start, len(tokens)) if _is_operator(tokens[j])), len(tokens))
                commands.append(tokens[start:end])

    for line in text.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#"):
            continue
        before = len(commands)
        if re.search(r"llm[-_]jax train", line):
            scan(shlex.split(line))
            assert len(commands) > before, f"a train command the test cannot read: {line}"
    return commands


def check_train_args(args: list[str], hardware: tuple[int, int, int] | None = None) -> None:
    """What `llm-jax train` does with its arguments before it starts JAX: the same parser and config loading (which
    raise on an unknown flag, key, value or preset), then, given the hardware, the config's validation."""
    expanded = []
    for arg in args:
        for name, value in RUNTIME_VARIABLES.items():
            arg = re.sub(rf"\$\{{?{name}\}}?", value, arg)
        assert "$" not in arg and "{{" not in arg, f"unexpanded variable in {arg!r}"
        expanded.append(arg)
    parser = _config_parser("train")
    parser.add_argument("--workdir", required=True)
    try:
        flags = parser.parse_args([a for a in expanded if not a.startswith("--config.")])
    except SystemExit:
        raise AssertionError(f"llm-jax train rejects {shlex.join(args)} (argparse's message is above)") from None
    assert "://" not in flags.workdir, f"--workdir={flags.workdir}: the run writes to a filesystem path (a mount)"
    path, _, presets = flags.config.partition(":")
    assert path == TRAIN_CONFIG_PATH, f"--config={flags.config} is not the repository's {TRAIN_CONFIG_PATH}"
    cfg = load_config(f"{REPO / path}:{presets}", [a[len("--config."):] for a in expanded if a.startswith("--config.")])
    if hardware is None:
        return
    devices, processes, granules = hardware
    cfg = finalize(cfg, BYTE_VOCAB)
    if cfg.train.per_device_batch:
        cfg.train.global_batch = cfg.train.per_device_batch * devices
    assert math.prod(validate(cfg, devices, processes, granules)) == devices


def _dry_run(name, tmp_path, launch_dir=REPO / "launch") -> subprocess.CompletedProcess:
    script, args, env, _ = CASES[name]
    out = _launch(script, args, env, tmp_path, launch_dir)
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_dry_run_prints_the_commands_and_calls_no_cluster_tool(name, tmp_path):
    out = _dry_run(name, tmp_path)
    assert _calls(tmp_path) == [], f"a dry run called {_calls(tmp_path)}"
    lines = [line for line in out.stdout.splitlines() if line.strip() and not line.startswith("#")]
    if name.startswith("k8s"):
        manifest = yaml.safe_load(out.stdout)
        assert manifest["kind"] == "JobSet" and not re.search(r"\{\{[A-Z_]+\}\}", out.stdout)
    else:
        programs = {shlex.split(line)[0] for line in lines}
        assert lines and programs <= {"gcloud", "sbatch", "srun", "tar", str(REPO / ".venv/bin/python"), "python3"}
    assert (len(train_commands(out.stdout)) > 0) == (CASES[name][3] is not None)


@pytest.mark.parametrize("name", TRAINS)
def test_every_train_command_the_scripts_print_is_accepted_by_the_cli(name, tmp_path):
    commands = train_commands(_dry_run(name, tmp_path).stdout)
    assert len(commands) == int(CASES[name][2].get("NPROC", 1)), commands
    for args in commands:
        check_train_args(args, CASES[name][3])


def test_each_kind_of_job_gets_the_runtime_flags_it_needs(tmp_path):
    for i, args in enumerate(train_commands(_dry_run("local-2x4", tmp_path).stdout)):
        assert args[-4:] == ["--config.runtime.num_cpu_devices=4",
                             "--config.runtime.coordinator_address=127.0.0.1:23456",
                             "--config.runtime.num_processes=2", f"--config.runtime.process_id={i}"]
    (slurm,) = train_commands(_dry_run("slurm-in-job", tmp_path).stdout)
    assert "--config.mesh.dcn_data=3" in slurm and not any("runtime" in a for a in slurm)  # JAX reads SLURM's env
    (k8s,) = train_commands(_dry_run("k8s-gpu", tmp_path).stdout)
    assert {"--config.runtime.coordinator_address=llm-jax-workers-0-0.llm-jax:1234",
            "--config.runtime.num_processes=2", "--config.runtime.process_id=$JOB_COMPLETION_INDEX"} <= set(k8s)
    (tpu,) = train_commands(_dry_run("tpu-multislice-train", tmp_path).stdout)
    assert "--config=configs/train.py:model=llama3_8b,topology=tpu_v5p_128x2" in tpu  # the DCN axis comes with it


@pytest.mark.parametrize(("file", "old", "new", "cases", "error"), [
    ("local.sh", "--config.runtime.process_id=", "--config.runtime.proc_id=", ["local-2x4"], "unknown config key"),
    ("slurm.sbatch", "--config.mesh.dcn_data=", "--config.mesh.dcn_dta=", ["slurm"], "unknown config key"),
    ("tpu_vm.sh", '"--workdir=$WORKDIR"', '"--work-dir=$WORKDIR"', ["tpu-train"], "rejects"),
    ("tpu_vm.sh", "tpu_v5p_128x$SLICES", "tpu_v5p_256x$SLICES", ["tpu-multislice-train"], "unknown topology preset"),
    ("k8s/render.sh", "TOPOLOGY:-gpu_cluster", "TOPOLOGY:-gpu_clustr", ["k8s-gpu"], "unknown topology preset"),
    ("k8s/jobset-gpu.yaml", "num_processes={{NODES}}", "num_processes={{NODES}}.5", ["k8s-gpu"], "expects int"),
    ("k8s/jobset-tpu.yaml", '"--workdir={{WORKDIR}}"', '"--workdir={{WORKDIR}}", "--steps=5"', ["k8s-tpu"],
     "rejects"),
])
def test_the_check_catches_a_flag_the_cli_would_refuse(file, old, new, cases, error, tmp_path):
    launch_dir = tmp_path / "copy" / "launch"
    shutil.copytree(REPO / "launch", launch_dir)
    text = (launch_dir / file).read_text()
    assert old in text
    (launch_dir / file).write_text(text.replace(old, new))
    for name in cases:
        commands = train_commands(_dry_run(name, tmp_path, launch_dir).stdout)
        assert commands
        with pytest.raises((AssertionError, ConfigError), match=error):
            for args in commands:
                check_train_args(args)


@pytest.mark.parametrize("name", ["slurm", "slurm-in-job", "tpu-create", "tpu-train", "tpu-stop",
                                  "tpu-multislice-train", "tpu-delete", "k8s-gpu", "k8s-tpu"])
def test_without_dry_run_the_scripts_run_what_the_dry_run_printed(name, tmp_path):
    script, args, env, _ = CASES[name]
    env = {**env, "WORKDIR": "/mnt/shared/run", "IMAGE": "r/llm-jax:1"}
    printed = _launch(script, args, env, tmp_path).stdout
    out = _launch(script, args, env, tmp_path, dry=False)
    assert out.returncode == 0, out.stderr
    calls = _calls(tmp_path)
    if name.startswith("k8s"):
        assert calls == [{"argv": ["kubectl", "apply", "-f", "-"], "stdin": printed}]
    else:  # outside a job, slurm.sbatch submits itself; the srun line it also prints is what the job will run
        commands = [shlex.split(line) for line in printed.splitlines() if not line.startswith("#")]
        assert [c["argv"] for c in calls] == commands[:1]


def test_the_scripts_refuse_to_apply_or_train_without_an_image_and_a_workdir(tmp_path):
    out = _launch("k8s/render.sh", ["gpu"], {}, tmp_path, dry=False)
    assert out.returncode == 2 and "set IMAGE" in out.stderr and _calls(tmp_path) == []
    out = _launch("tpu_vm.sh", ["train"], {}, tmp_path, dry=False)
    assert out.returncode == 2 and "set WORKDIR" in out.stderr and _calls(tmp_path) == []


FAKE_TRAINER = """#!{python}
import signal, sys, time
rank = int([a for a in sys.argv if a.startswith("--config.runtime.process_id=")][0].split("=")[1])
print("ready", flush=True)
if {mode!r} == "fail" and rank == 1:
    sys.exit(3)
if {mode!r} == "fail":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # like a peer stuck in a collective: only SIGKILL ends it
else:
    signal.signal(signal.SIGTERM, lambda *_: (print("saved, stopping", flush=True), sys.exit(0)))
time.sleep(60)
"""


@pytest.mark.parametrize("mode", ["fail", "sigterm"])
def test_local_launcher_stops_every_process_when_one_fails_or_it_gets_sigterm(mode, tmp_path):
    fake = tmp_path / "python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable, mode=mode))
    fake.chmod(0o755)
    logs = tmp_path / "logs"
    env = _env(tmp_path, NPROC="3", PYTHON=str(fake), PORT="1", GRACE_S="1", LOG_DIR=str(logs))
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "launch/local.sh", "--", "--workdir=x"], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if mode == "sigterm":
        ready = lambda i: (logs / f"process_{i}.log").exists() and "ready" in (logs / f"process_{i}.log").read_text()
        while not all(ready(i) for i in range(3)):
            assert time.monotonic() - start < 30 and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert time.monotonic() - start < 20  # nobody waited out the 60 s sleep
    lines = stdout.splitlines()
    assert all(f"[{i}] ready" in lines for i in range(3)), stdout
    if mode == "fail":
        assert proc.returncode == 3, stderr
        assert "process 1 exited with status 3; stopping the other processes" in stderr
    else:
        assert proc.returncode == 0, stderr
        assert all(f"[{i}] saved, stopping" in lines for i in range(3)), stdout
        assert (logs / "process_2.log").read_text() == "ready\nsaved, stopping\n"


AWKWARD = ["--config.sample.prompt=ROMEO:\n", "--config.sample.prompt=it's \"quoted\" \\ # not a comment",
           "--config.data.train_files=$HOME/a b/*.txt", "--config.sample.prompt=$(touch pwned) & `id` $$",
           "--config.sample.prompt=\tkey: value\n- item\n  indented: {x: [1]}\r\n",
           "--config.sample.prompt=é — 日本\x7f\x01"]


@pytest.mark.parametrize("kind", ["gpu", "tpu"])
def test_arguments_with_newlines_and_quotes_reach_llm_jax_unchanged_through_the_manifest(kind, tmp_path):
    """The manifest parses as YAML into one JobSet, and what the pod runs (Kubernetes' $(VAR) expansion, then bash's
    "$@" for gpu) hands llm-jax exactly the arguments given, with a workdir that is just as awkward."""
    workdir = "/workdir/it's a \"run\"\nnext: line $(x)"
    out = _launch("k8s/render.sh", [kind, "--", *AWKWARD], {"WORKDIR": workdir, "NAME": "job-1"}, tmp_path)
    assert out.returncode == 0, out.stderr
    jobset = yaml.safe_load(out.stdout)
    assert jobset["kind"] == "JobSet" and jobset["metadata"]["name"] == "job-1"
    (argv,) = k8s_argvs(out.stdout, env={"JOB_COMPLETION_INDEX": "3"})  # the Job controller sets it in the pod
    if kind == "gpu":  # run the pod's bash command line for real, with a python that reports its arguments
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "python").write_text(f"#!{sys.executable}\nimport json, sys\n"
                                        f"open({str(tmp_path / 'argv.json')!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
        (bin_dir / "python").chmod(0o755)
        env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JOB_COMPLETION_INDEX": "3"}
        subprocess.run(argv, env=env, check=True, timeout=30)
        argv = ["python", *json.loads((tmp_path / "argv.json").read_text())]
        assert "--config.runtime.process_id=3" in argv
    assert argv[:4] == ["python", "-m", "llm_jax", "train"]
    assert f"--workdir={workdir}" in argv and argv[-len(AWKWARD):] == AWKWARD
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


CRAFTED = "PATH[$(touch {marker})]"  # a set variable: with an unset one, set -u stops bash first


@pytest.mark.parametrize(("script", "args", "variable"), [
    ("k8s/render.sh", ["tpu"], "SLICES"), ("tpu_vm.sh", ["create"], "SLICES"), ("k8s/render.sh", ["gpu"], "NODES"),
    ("k8s/render.sh", ["gpu"], "PORT"), ("k8s/render.sh", ["tpu"], "HOSTS_PER_SLICE"),
])
def test_a_number_from_the_environment_is_checked_before_the_shell_evaluates_it(script, args, variable, tmp_path):
    marker = tmp_path / "pwned"
    out = _launch(script, args, {variable: CRAFTED.format(marker=marker)}, tmp_path)
    assert out.returncode == 2 and not marker.exists(), out.stderr
    assert out.stderr.count("\n") == 1 and f"{variable} must be a whole number" in out.stderr, out.stderr
    assert out.stdout == "" and _calls(tmp_path) == []
    for bad in ("1.5", "08", "2\n", "-1", "0"):  # not a whole number, octal to bash, a newline that adds YAML, none
        out = _launch(script, args, {variable: bad}, tmp_path)
        assert out.returncode == 2 and f"{variable} must be a whole number" in out.stderr, (bad, out.stderr)


def test_the_jobset_name_must_be_a_dns_label(tmp_path):
    out = _launch("k8s/render.sh", ["gpu"], {"NAME": "x\nspec: {}"}, tmp_path)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "NAME must be a DNS label" in out.stderr
