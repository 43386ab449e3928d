"""Console: a progress bar on terminals only, never in the log file or in piped output; the run record in run.json."""

import datetime
import io
import json
import re
import subprocess
import sys
import tomllib

import jax

from llm_jax.monitor import record
from llm_jax.monitor.console import Console
from tests.conftest import REPO

CLEAR = "\r\x1b[K"


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_piped_output_has_lines_only_and_matches_the_log(tmp_path):
    log = tmp_path / "new" / "dir" / "train.log"  # the directory is created
    out = io.StringIO()
    with Console(log, stream=out) as console:
        console.progress(1, 10, 2.5, 1000.0, 30.0)
        assert out.getvalue() == ""
        console.line("step 1 | loss 2.5000")
        console.progress(10, 10, 2.0, 1000.0, 0.0)  # not even at the last step
        console.line("done")
    assert out.getvalue() == "step 1 | loss 2.5000\ndone\n"
    assert log.read_text() == out.getvalue()
    with Console(log, stream=io.StringIO()) as console:  # a resumed run appends
        console.line("resumed")
    assert log.read_text() == "step 1 | loss 2.5000\ndone\nresumed\n"
    assert "\r" not in log.read_text() and "\x1b" not in log.read_text()


def test_terminal_bar_shows_progress_loss_speed_and_eta(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    out = Terminal()
    Console(None, stream=out).progress(120, 800, 2.31041, 7512.3, 90.0)
    text = out.getvalue()
    assert text.startswith(CLEAR) and "\n" not in text
    bar = text[len(CLEAR):]
    assert re.fullmatch(r"\[#+\.+\] 120/800 15% \| loss 2\.3104 \| 7,512 tok/s \| ETA 1m30s", bar), bar
    assert len(bar) < 100


def test_bar_fits_the_terminal_width(monkeypatch):
    for columns in (60, 30, 12):
        monkeypatch.setenv("COLUMNS", str(columns))
        out = Terminal()
        Console(None, stream=out).progress(5, 10, 1.0, 123456.0, 3725.0)
        assert 0 < len(out.getvalue()) - len(CLEAR) < columns, (columns, out.getvalue())
    monkeypatch.setenv("COLUMNS", "60")
    out = Terminal()
    Console(None, stream=out).progress(5, 10, 1.0, 100.0, None)  # no ETA known yet
    assert "ETA" not in out.getvalue() and "5/10 50%" in out.getvalue()


def test_a_line_clears_the_bar_and_redraws_it_below(tmp_path):
    out = Terminal()
    log = tmp_path / "train.log"
    console = Console(log, stream=out)
    console.progress(3, 10, 2.0, 500.0, 10.0)
    bar = out.getvalue()[len(CLEAR):]
    assert "3/10" in bar
    console.line("eval loss 1.9")
    assert out.getvalue() == CLEAR + bar + CLEAR + "eval loss 1.9\n" + bar
    console.close()
    assert out.getvalue().endswith(bar + "\n")
    assert log.read_text() == "eval loss 1.9\n"


def test_redraws_are_throttled_except_the_last_step():
    out = Terminal()
    console = Console(None, stream=out, min_interval_s=60)
    console.progress(1, 10, 2.0, 500.0, 10.0)
    console.progress(2, 10, 2.0, 500.0, 10.0)  # too soon: skipped
    assert out.getvalue().count("\r") == 1 and "1/10" in out.getvalue() and "2/10" not in out.getvalue()
    console.progress(10, 10, 1.5, 500.0, 0.0)  # the last step is always drawn
    assert out.getvalue().count("\r") == 2 and "10/10 100%" in out.getvalue()

    out = Terminal()
    console = Console(None, stream=out, min_interval_s=0)
    console.progress(1, 10, 2.0, 500.0, 10.0)
    console.progress(2, 10, 2.0, 500.0, 10.0)
    assert out.getvalue().count("\r") == 2


def test_close_without_a_bar_adds_nothing():
    out = Terminal()
    console = Console(None, stream=out)
    console.line("hello")
    console.close()
    assert out.getvalue() == "hello\n"


def test_disabled_console_writes_nothing(tmp_path):
    out = Terminal()
    log = tmp_path / "logs" / "train.log"
    with Console(log, stream=out, enabled=False) as console:
        console.progress(10, 10, 1.0, 1.0, 0.0)
        console.line("hello")
    assert out.getvalue() == ""
    assert not log.parent.exists()


def test_run_record_fields(tmp_path):
    cfg = {"train": {"steps": 5}, "workdir": tmp_path, "shape": (2, 4)}  # a Path and a tuple: still serialisable
    rec = record.run_record(cfg, {"data": 2, "fsdp": 4}, argv=["llm-jax", "train"])
    started = datetime.datetime.fromisoformat(rec["started"])
    assert started.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - started).total_seconds()) < 60
    assert rec["argv"] == ["llm-jax", "train"]
    assert rec["config"]["train"] == {"steps": 5}
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
    assert re.fullmatch(r"[0-9a-f]{40}", rec["git"]["commit"])
    assert rec["git"]["commit"] == head.stdout.strip()
    assert isinstance(rec["git"]["dirty"], bool)
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert rec["versions"]["llm_jax"] == pyproject["version"]
    assert rec["versions"]["jax"] == jax.__version__
    assert set(rec["versions"]) >= {"jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "sentencepiece",
                                    "ml_collections", "tensorboardX", "numpy"}
    assert all(isinstance(v, str) for v in rec["versions"].values())
    assert rec["python"] == ".".join(map(str, sys.version_info[:3]))
    assert isinstance(rec["platform"], str) and isinstance(rec["hostname"], str) and rec["hostname"]
    assert (rec["process_index"], rec["process_count"]) == (0, 1)
    assert rec["device_count"] == rec["local_device_count"] == 8  # conftest's fake CPU devices
    assert (rec["device_platform"], rec["mesh_shape"]) == ("cpu", {"data": 2, "fsdp": 4})
    assert isinstance(rec["device_kind"], str)
    written = json.loads(record.write_run_record(tmp_path, rec).read_text())
    assert written["config"]["workdir"] == str(tmp_path) and written["config"]["shape"] == [2, 4]
    assert written["earlier"] == []
    assert record.run_record({}, {})["argv"] == sys.argv


def test_missing_package_and_missing_git_give_none(tmp_path, monkeypatch):
    monkeypatch.setattr(record, "PACKAGES", ("jax", "no-such-distribution-xyz"))
    assert record.package_versions() == {"jax": jax.__version__, "no-such-distribution-xyz": None}
    assert record.git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert record.git_state() == {"commit": None, "dirty": None}


def test_package_inside_someone_elses_checkout_has_no_commit(tmp_path):
    """An installed copy in a venv inside a checkout must not report that checkout's commit."""
    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=True).stdout.strip()

    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "x")
    pkg = tmp_path / "site-packages" / "llm_jax"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    assert record.git_state(pkg)["commit"] is None
    git("add", ".")
    git("commit", "-q", "-m", "y")
    assert record.git_state(pkg) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (pkg / "__init__.py").write_text("x = 1\n")
    assert record.git_state(pkg)["dirty"] is True


def test_resumed_run_keeps_every_start(tmp_path):
    for name in ("first", "second", "third"):
        record.write_run_record(tmp_path, record.run_record({"n": name}, {"data": 1}, argv=[name]))
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["argv"] == ["third"]
    assert [r["argv"] for r in run["earlier"]] == [["first"], ["second"]]
    assert all("earlier" not in r for r in run["earlier"])
    assert not (tmp_path / "run.json.tmp").exists()


def test_unreadable_run_json_is_kept_aside(tmp_path):
    (tmp_path / "run.json").write_text("{truncated")
    record.write_run_record(tmp_path, {"argv": ["new"]})
    assert json.loads((tmp_path / "run.json").read_text()) == {"argv": ["new"], "earlier": []}
    assert (tmp_path / "run.json.unreadable").read_text() == "{truncated"
