"""The TensorBoard that `make tensorboard` starts shows what the Writers logged: scalars, hparams and text.

A real server on a free loopback port, asked over HTTP the way its web page asks.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from llm_jax.monitor.writers import HPARAM_METRICS, Writers
from tests.conftest import small_config

TENSORBOARD = pathlib.Path(sys.executable).parent / "tensorboard"  # the script `make tensorboard` runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    # POSTs to plugins need TensorBoard's XSRF header, as its web page sends.
    headers = {"Content-Type": "application/json", "X-XSRF-Protected": "1"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, workdir): a run's events written by the real Writers, served by a real TensorBoard."""
    assert TENSORBOARD.exists(), f"{TENSORBOARD} missing: tensorboard must install with the package (make install)"
    workdir = tmp_path_factory.mktemp("tb") / "run"
    writers = Writers(workdir, enabled=True, progress_bar=False)
    writers.hparams(json.loads(small_config().to_json_best_effort()), {"num_params": 12345})
    for step in range(1, 4):
        writers.scalars(step, {"loss": 5.0 - step, "lr": 1e-3 * step})
    writers.scalars(3, {"loss": 1.75, "perplexity": 5.75, "bpb": 2.5}, prefix="eval_")
    writers.text(3, "samples", "ROMEO:\nWhat light")
    writers.end_hparams()
    writers.close()

    port = _free_port()
    log = (workdir.parent / "tensorboard.log").open("w")
    proc = subprocess.Popen([str(TENSORBOARD), f"--logdir={workdir}", "--host=127.0.0.1", f"--port={port}",
                             "--reload_interval=1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:  # up once the scalars are loaded, not merely listening
            try:
                if _get(f"{base}/data/plugin/scalars/tags").get("tensorboard"):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert proc.poll() is None, (workdir.parent / "tensorboard.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "TensorBoard did not list the run within 15 s"
            time.sleep(0.2)
        yield base, workdir
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # its own session: the server and any data-server child it started
        proc.wait(timeout=10)
        log.close()


def _listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel lists them) of the TCP sockets listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in pathlib.Path(table).read_text().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                found.add(local.rsplit(":", 1)[0])
    return found


def test_it_listens_on_loopback_only(server):
    base, _ = server
    assert _listening_addresses(int(base.rsplit(":", 1)[1])) == {"0100007F"}  # 127.0.0.1, nothing else


def test_the_scalars_tab_lists_the_runs_tags(server):
    base, _ = server
    tags = _get(f"{base}/data/plugin/scalars/tags")
    assert set(tags) == {"tensorboard"}  # the run: <workdir>/tensorboard
    assert {"train/loss", "train/lr", "eval/loss", "eval/perplexity", "eval/bpb"} <= set(tags["tensorboard"])
    points = _get(f"{base}/data/plugin/scalars/scalars?run=tensorboard&tag=train/loss")
    assert [(p[1], p[2]) for p in points] == [(1, 4.0), (2, 3.0), (3, 2.0)]  # [wall time, step, value]


def test_the_hparams_tab_lists_the_config_and_the_eval_metrics(server):
    base, _ = server
    experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    names = [h["name"] for h in experiment["hparamInfos"]]
    assert {"model.d_model", "optimizer.lr", "train.steps", "num_params"} <= set(names)
    assert not any(n.startswith(("checkpoint.", "runtime.", "monitor.")) for n in names), names
    assert [m["name"]["tag"] for m in experiment["metricInfos"]] == list(HPARAM_METRICS)
    groups = _get(f"{base}/data/plugin/hparams/session_groups", {
        "experimentName": "", "allowedStatuses": ["STATUS_SUCCESS", "STATUS_RUNNING", "STATUS_UNKNOWN"],
        "colParams": [{"hparam": "model.d_model"}, {"metric": {"tag": "eval/loss"}}], "startIndex": 0,
        "sliceSize": 10})["sessionGroups"]
    assert len(groups) == 1 and groups[0]["hparams"]["model.d_model"] == 64
    assert groups[0]["hparams"]["num_params"] == 12345 and groups[0]["hparams"]["model.norm"] == "rmsnorm"
    (session,) = groups[0]["sessions"]
    assert session["status"] == "STATUS_SUCCESS"  # end_hparams closed it
    assert {m["name"]["tag"]: m["value"] for m in session["metricValues"]}["eval/loss"] == 1.75


def test_the_text_tab_lists_the_sample(server):
    base, _ = server
    assert _get(f"{base}/data/plugin/text/tags") == {"tensorboard": ["samples/text_summary"]}
    (entry,) = _get(f"{base}/data/plugin/text/text?run=tensorboard&tag=samples/text_summary")
    assert entry["step"] == 3 and "ROMEO:" in entry["text"] and "What light" in entry["text"]
