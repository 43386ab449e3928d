"""One process of a real 2-process JAX job that reads training batches; run by test_multiprocess_data.py.

usage: python -m tests.multiprocess_data_worker PORT PROCESS_ID OUT.npz
"""

import sys

if __name__ == "__main__":
    port, process_id, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    import jax
    import numpy as np

    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)
    from llm_jax.data.pipeline import make_data
    from tests.conftest import small_config

    cfg = small_config()
    cfg.data.workers = 1  # a grain worker process inside each JAX process
    data = make_data(cfg, process_index=jax.process_index(), process_count=jax.process_count())
    try:
        batches = [next(data.train)["inputs"] for _ in range(4)]
    finally:
        data.train.close()
    np.savez(out, inputs=np.stack(batches), process_index=jax.process_index(), examples=data.train.examples)
    jax.distributed.shutdown()
