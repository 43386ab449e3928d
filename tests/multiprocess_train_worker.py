"""One process of a real 2-process JAX training job; run by test_multiprocess_train.py.

usage: python -m tests.multiprocess_train_worker PORT PROCESS_ID WORKDIR STEPS OUT.json
"""

import json
import os
import sys

if __name__ == "__main__":
    port, process_id, workdir, steps, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
    import jax

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    from llm_jax.train.loop import train
    from tests.conftest import small_config

    # conftest asks for 8 devices per process; this job has 2 per process (4 in all). The backend starts later.
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

    cfg = small_config()
    cfg.train.steps, cfg.train.log_every, cfg.checkpoint.every_steps = steps, 1, 1000
    cfg.sample.max_new_tokens = 8  # the final sample: generation with parameters sharded over two processes
    result = train(cfg, workdir)
    with open(out, "w") as f:
        json.dump({"stopped_at": result.stopped_at, "start_step": result.start_step,
                   "losses": result.train_losses, "devices": jax.device_count(), "sample": result.sample,
                   "eval_loss": result.eval_loss}, f)
    jax.distributed.shutdown()
