"""Golden values: the first two losses of a fixed tiny config, on one device.

A change to the model, initialisation, optimizer or data order moves these numbers. If the change is intended,
regenerate them with `.venv/bin/python -m tests.test_golden` and paste the printed values below.
"""

import jax
import numpy as np

from llm_jax.train import loop

GOLDEN_LOSSES = [5.7782979012, 5.4760460854]


def golden_run(workdir) -> list[float]:
    from tests.conftest import small_config

    cfg = small_config()
    cfg.mesh.data = 1
    cfg.train.steps = 2
    cfg.optimizer.warmup_steps = 0  # so the first update moves the parameters and the second loss sees it
    return loop.train(cfg, workdir, devices=jax.devices()[:1]).train_losses


def test_golden_one_step(tmp_path):
    losses = golden_run(tmp_path)
    np.testing.assert_allclose(
        losses, GOLDEN_LOSSES, rtol=2e-5,
        err_msg="golden losses changed; if intended, run `.venv/bin/python -m tests.test_golden` and update "
                "GOLDEN_LOSSES in tests/test_golden.py")


if __name__ == "__main__":
    import tempfile

    import tests.conftest  # noqa: F401  (8 CPU devices, as in the test)

    with tempfile.TemporaryDirectory() as d:
        print("GOLDEN_LOSSES = [" + ", ".join(f"{v:.10f}" for v in golden_run(d)) + "]")
