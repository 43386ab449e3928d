#!/usr/bin/env bash
# Train on a Cloud TPU VM slice (every host of the slice runs one process; JAX finds the others itself), or on
# several slices joined over the data-centre network (multislice, SLICES=2: a queued resource of 2 nodes).
#
#   launch/tpu_vm.sh create              create the TPU VM (SLICES>1: a multislice queued resource)
#   launch/tpu_vm.sh setup               copy this checkout to every host and install it (.venv, jax[tpu])
#   launch/tpu_vm.sh train [args]        run llm-jax train on every host at once; args go to llm-jax train
#   launch/tpu_vm.sh stop                SIGTERM the run on every host: all save a checkpoint at the same step
#   launch/tpu_vm.sh delete              delete the TPU VM / queued resource
#   DRY_RUN=1 launch/tpu_vm.sh ACTION    print the gcloud (and tar) commands instead of running them
#
# Environment (defaults in brackets):
#   TPU_NAME [llm-jax]  ZONE [us-east5-a]  PROJECT [gcloud's default]
#   ACCELERATOR [v5p-128]  RUNTIME_VERSION [v2-alpha-tpuv5]   the slice type and TPU software version (create)
#   SLICES [1]          2 or more: a multislice queued resource named TPU_NAME of SLICES nodes (a whole number)
#   MODEL [llama3_8b]   TOPOLOGY [tpu_v5p_128; tpu_v5p_128x2 with SLICES=2]   presets in configs/
#   WORKDIR             required for train: a directory on a filesystem that every host mounts (Filestore NFS,
#                       a gcsfuse mount of a bucket): every host writes its part of each checkpoint
#   REPO_URL [unset]    setup clones this git URL on every host instead of copying the local checkout
#   DETACH [0]          1: train runs under nohup (log in ~/llm_jax_train.log on each host), so it survives the
#                       ssh session; follow it with: gcloud compute tpus tpu-vm ssh ... --command='tail -f ...'
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

TPU_NAME=${TPU_NAME:-llm-jax}
ZONE=${ZONE:-us-east5-a}
PROJECT=${PROJECT:-}
ACCELERATOR=${ACCELERATOR:-v5p-128}
RUNTIME_VERSION=${RUNTIME_VERSION:-v2-alpha-tpuv5}
SLICES=${SLICES:-1}
require_int SLICES 1 # before ((SLICES == 1)) below evaluates it
MODEL=${MODEL:-llama3_8b}
if ((SLICES == 1)); then
  TOPOLOGY=${TOPOLOGY:-tpu_v5p_128}
else
  TOPOLOGY=${TOPOLOGY:-tpu_v5p_128x$SLICES}
fi
WORKDIR=${WORKDIR:-}
REPO_URL=${REPO_URL:-}
DETACH=${DETACH:-0}

action=${1:-}
[[ -n $action ]] || die "usage: launch/tpu_vm.sh create|setup|train|stop|delete [llm-jax train args]"
shift
if [[ ${1:-} == -- ]]; then
  shift
fi

where=("--zone=$ZONE")
if [[ -n $PROJECT ]]; then
  where+=("--project=$PROJECT")
fi
if ((SLICES == 1)); then
  ssh=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${where[@]}" --worker=all)
  scp=(gcloud compute tpus tpu-vm scp "${where[@]}" --worker=all)
else
  ssh=(gcloud compute tpus queued-resources ssh "$TPU_NAME" "${where[@]}" --node=all --worker=all)
  scp=(gcloud compute tpus queued-resources scp "${where[@]}" --node=all --worker=all)
fi
# shellcheck disable=SC2088 # these paths are expanded by the shell on each host, not here
remote_dir='~/llm_jax'
# shellcheck disable=SC2088
pid_file='~/llm_jax_train.pid' # the training process, for `stop`

case $action in
  create)
    if ((SLICES == 1)); then
      run gcloud compute tpus tpu-vm create "$TPU_NAME" "${where[@]}" "--accelerator-type=$ACCELERATOR" \
        "--version=$RUNTIME_VERSION"
    else
      run gcloud compute tpus queued-resources create "$TPU_NAME" "${where[@]}" "--accelerator-type=$ACCELERATOR" \
        "--runtime-version=$RUNTIME_VERSION" "--node-count=$SLICES" "--node-prefix=$TPU_NAME"
    fi
    ;;
  setup)
    # The package needs Python >= 3.11; TPU images with an older python3 get one from uv.
    venv='if python3 -c "import sys; sys.exit(sys.version_info < (3, 11))"; then python3 -m venv .venv; '
    venv+='else python3 -m pip install --user --quiet uv && ~/.local/bin/uv venv --seed --python 3.12 .venv; fi'
    install="cd $remote_dir && { [ -x .venv/bin/python ] || { $venv; }; } && .venv/bin/python -m pip install --quiet -e '.[tpu]'"
    if [[ -n $REPO_URL ]]; then
      run "${ssh[@]}" "--command=set -e; rm -rf $remote_dir; git clone --depth=1 $(quote "$REPO_URL") $remote_dir; $install"
    else
      tarball=${TMPDIR:-/tmp}/llm_jax_src.tgz
      run tar -C "$LAUNCH_REPO" -czf "$tarball" --exclude=.git --exclude=.venv --exclude=runs --exclude=__pycache__ \
        --exclude=.pytest_cache --exclude=.ruff_cache .
      run "${scp[@]}" "$tarball" "$TPU_NAME:~/llm_jax_src.tgz"
      # Replace the sources, keep an existing .venv (pip then only updates the package).
      run "${ssh[@]}" "--command=set -e; mkdir -p $remote_dir; find $remote_dir -mindepth 1 -maxdepth 1 ! -name .venv \
-exec rm -rf {} +; tar -xzf ~/llm_jax_src.tgz -C $remote_dir; $install"
    fi
    ;;
  train)
    if [[ -z $WORKDIR ]]; then
      dry_run || die "set WORKDIR to a directory every host mounts, e.g. WORKDIR=/mnt/shared/runs/$MODEL"
      WORKDIR=/mnt/shared/runs/$MODEL
    fi
    train=$(quote .venv/bin/llm-jax train "--config=configs/train.py:model=$MODEL,topology=$TOPOLOGY" \
      "--workdir=$WORKDIR" "$@")
    if [[ $DETACH == 1 ]]; then
      remote="cd $remote_dir && { nohup $train > ~/llm_jax_train.log 2>&1 < /dev/null & echo \$! > $pid_file; }"
    else
      remote="cd $remote_dir && echo \$\$ > $pid_file && exec $train"
    fi
    run "${ssh[@]}" "--command=$remote"
    ;;
  stop)
    run "${ssh[@]}" "--command=if [ -f $pid_file ]; then kill -TERM \$(cat $pid_file) 2>/dev/null || true; fi"
    ;;
  delete)
    if ((SLICES == 1)); then
      run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${where[@]}" --quiet
    else
      run gcloud compute tpus queued-resources delete "$TPU_NAME" "${where[@]}" --force --quiet
    fi
    ;;
  *)
    die "unknown action '$action'; use create, setup, train, stop or delete"
    ;;
esac
