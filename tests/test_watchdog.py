"""The step watchdog fires only when steps stop finishing, never before the first step or while paused."""

import threading
import time

from llm_jax.train.watchdog import Watchdog


def _watch(timeout_s: float):
    fired = threading.Event()
    messages = []
    dog = Watchdog(timeout_s, on_timeout=lambda m: (messages.append(m), fired.set()))
    return dog, fired, messages


def test_fires_when_steps_stop_and_names_the_last_one():
    dog, fired, messages = _watch(0.3)
    dog.beat("step 7")
    assert fired.wait(3.0)
    assert "no progress for 0.3 s after step 7 (runtime.step_timeout_s)" in messages[0]
    dog.close()


def test_quiet_while_steps_finish_before_the_first_step_and_while_paused():
    dog, fired, _ = _watch(0.3)
    time.sleep(0.8)  # not armed yet: the first step includes compilation
    for i in range(8):
        dog.beat(f"step {i}")
        time.sleep(0.1)
    dog.pause()
    time.sleep(0.8)
    assert not fired.is_set()
    dog.close()


def test_off_when_the_timeout_is_zero():
    dog, fired, _ = _watch(0.0)
    dog.beat("step 1")
    time.sleep(0.5)
    assert dog._thread is None and not fired.is_set()
