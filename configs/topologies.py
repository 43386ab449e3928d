"""Topology presets, picked with `--config=configs/train.py:topology=NAME`. Each sets the mesh, the batch per
device, dtypes, rematerialisation and the compiler flags for one kind of hardware.

Mesh axes: `mesh.data/fsdp/tensor` are sizes inside one TPU slice or GPU node (ICI / NVLink; `-1` = all its
devices the other axes leave), `mesh.dcn_data/dcn_fsdp/dcn_tensor` across slices or nodes (DCN / InfiniBand;
`-1` = all the slices or nodes the others leave). Only data parallelism (or FSDP's gradient reduce-scatter, which
overlaps with compute) should cross the slower network. Multi-host presets end a process whose steps stop
finishing for 30 minutes (`runtime.step_timeout_s`: a stuck peer would otherwise hang the job). Any key can still
be overridden on the command line. `devices`, `processes` (and `slices`) say what the preset is for (`llm-jax plan`
and the tests use them); they are not config keys.
"""

# XLA flags for NVIDIA GPUs: overlap collectives with compute (latency-hiding scheduler, pipelined collectives,
# a high-priority stream for them) and combine small collectives into large ones.
GPU_XLA_FLAGS = " ".join([
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_enable_highest_priority_async_stream=true",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=67108864",
])
# libtpu flags (LIBTPU_INIT_ARGS): fuse and overlap FSDP's all-gathers and reduce-scatters with compute.
TPU_LIBTPU_ARGS = " ".join([
    "--xla_tpu_enable_async_collective_fusion=true",
    "--xla_tpu_enable_async_collective_fusion_fuse_all_gather=true",
    "--xla_tpu_enable_async_collective_fusion_multiple_steps=true",
    "--xla_tpu_overlap_compute_collective_tc=true",
    "--xla_enable_async_all_gather=true",
])
# Data parallelism across slices: the gradient all-reduce over DCN is overlapped too.
MULTISLICE_LIBTPU_ARGS = TPU_LIBTPU_ARGS + " --xla_tpu_enable_data_parallel_all_reduce_opt=true " \
    "--xla_tpu_data_parallel_opt_different_sized_ops=true"

# bf16 compute, f32 master weights; compiled programs kept across runs (restarts and sweeps skip compiling).
ACCELERATOR = {"model.dtype": "bfloat16", "model.param_dtype": "float32",
               "runtime.compilation_cache_dir": "~/.cache/llm_jax/compilation"}

PRESETS = {
    # One CPU device: the laptop / CI default.
    "cpu": {"mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1, "devices": 1, "processes": 1},
    # The host CPU split into 8 devices: rehearses a real (data, fsdp, tensor) mesh without accelerators.
    # Pick the split with e.g. --config.mesh.data=2 --config.mesh.fsdp=2 --config.mesh.tensor=2.
    "cpu_8dev": {"runtime.num_cpu_devices": 8, "mesh.data": -1, "mesh.fsdp": 1, "mesh.tensor": 1,
                 "devices": 8, "processes": 1},
    # One GPU: no sharding; remat off while the model fits.
    "gpu_1": {**ACCELERATOR, "mesh.data": -1, "train.per_device_batch": 16, "model.remat": "none",
              "runtime.xla_flags": GPU_XLA_FLAGS, "devices": 1, "processes": 1},
    # One node of 8 H100s over NVLink: FSDP over the node (ZeRO-3: parameters, gradients and optimizer state split
    # 8 ways), weight matmuls kept and the rest recomputed.
    "h100_8": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "train.per_device_batch": 4, "model.remat": "dots",
               "runtime.xla_flags": GPU_XLA_FLAGS, "devices": 8, "processes": 1},
    # N nodes of 8 GPUs (one process per node, e.g. launch/slurm.sbatch): FSDP inside each node, data parallel
    # across nodes. `devices`/`processes` describe a 4-node example; the mesh fits any node count.
    "gpu_cluster": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "mesh.dcn_data": -1,
                    "train.per_device_batch": 4, "model.remat": "dots", "runtime.xla_flags": GPU_XLA_FLAGS,
                    "runtime.step_timeout_s": 1800.0,
                    "devices": 32, "processes": 4},
    # TPU v4-8: 4 chips (JAX devices) on one host.
    "tpu_v4_8": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "train.per_device_batch": 16,
                 "model.remat": "dots", "runtime.libtpu_init_args": TPU_LIBTPU_ARGS, "devices": 4, "processes": 1},
    # TPU v5e-256: 256 chips of 16 GiB on 64 hosts: FSDP over the slice, full remat (small HBM per chip).
    "tpu_v5e_256": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "train.per_device_batch": 4,
                    "model.remat": "full", "runtime.libtpu_init_args": TPU_LIBTPU_ARGS,
                    "runtime.step_timeout_s": 1800.0,
                    "devices": 256, "processes": 64},
    # TPU v5p-128: 64 chips of 95 GiB on 16 hosts (the name counts TensorCores, 2 per chip). 16 rows per chip:
    # the weights FSDP gathers each step are then worth the compute (`llm-jax plan`: llama3_8b compute-bound, MFU
    # ~81%, at 8.4 of 95 GiB; with 4 rows network-bound at ~44%). Longer sequences: fewer rows, e.g. 2 at 8192.
    "tpu_v5p_128": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "train.per_device_batch": 16,
                    "model.remat": "dots", "runtime.libtpu_init_args": TPU_LIBTPU_ARGS,
                    "runtime.step_timeout_s": 1800.0,
                    "devices": 64, "processes": 16},
    # TPU v6e-256 (Trillium): 256 chips of 32 GiB on 64 hosts.
    "tpu_v6e_256": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "train.per_device_batch": 4,
                    "model.remat": "dots", "runtime.libtpu_init_args": TPU_LIBTPU_ARGS,
                    "runtime.step_timeout_s": 1800.0,
                    "devices": 256, "processes": 64},
    # Two v5p-128 slices over DCN: FSDP inside each slice, data parallel across them (multislice).
    "tpu_v5p_128x2": {**ACCELERATOR, "mesh.data": 1, "mesh.fsdp": -1, "mesh.dcn_data": 2,
                      "train.per_device_batch": 16, "model.remat": "dots",
                      "runtime.libtpu_init_args": MULTISLICE_LIBTPU_ARGS, "runtime.step_timeout_s": 1800.0,
                      "devices": 128, "processes": 32, "slices": 2},
}
