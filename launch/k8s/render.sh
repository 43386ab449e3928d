#!/usr/bin/env bash
# Fill a JobSet template from environment variables, then apply it (kubectl apply -f -), or print it.
#
#   IMAGE=REGISTRY/llm-jax:cuda NODES=4 launch/k8s/render.sh gpu [llm-jax train args]
#   IMAGE=REGISTRY/llm-jax:tpu SLICES=2 launch/k8s/render.sh tpu [llm-jax train args]
#   DRY_RUN=1 launch/k8s/render.sh gpu|tpu [args]    print the manifest instead of applying it (kubectl not called)
#
# Trailing arguments are added to the `llm-jax train` command line. Environment (defaults in brackets):
#   both  NAME [llm-jax] (the JobSet; its pods and service are named after it), IMAGE (required to apply: an image
#         with this repository at REPO_DIR [/app] and the package installed, see launch/k8s/Dockerfile),
#         MODEL [llama3_8b], MAX_RESTARTS [3],
#         WORKDIR_PVC [llm-jax-workdir]: a ReadWriteMany PersistentVolumeClaim (NFS, Filestore, a GCS FUSE CSI
#         volume) that every pod mounts at WORKDIR_MOUNT [/workdir]; all processes take part in every checkpoint,
#         WORKDIR [WORKDIR_MOUNT/runs/MODEL]
#   gpu   NODES [2], GPUS_PER_NODE [8], TOPOLOGY [gpu_cluster], PORT [1234] (the coordinator's, on pod 0)
#   tpu   SLICES [1], TPU_ACCELERATOR [tpu-v5p-slice], TPU_TOPOLOGY [4x4x4], HOSTS_PER_SLICE [16],
#         CHIPS_PER_HOST [4], TOPOLOGY [tpu_v5p_128; tpu_v5p_128x2 with SLICES=2]
# Counts and ports must be whole numbers and NAME a DNS label (refused otherwise); every other value, and each
# argument, is written as a JSON-quoted string, so a newline or a quote in it cannot end or rewrite the manifest.
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

kind=${1:-}
[[ $kind == gpu || $kind == tpu ]] || die "usage: launch/k8s/render.sh gpu|tpu [llm-jax train args]"
shift
if [[ ${1:-} == -- ]]; then
  shift
fi

NAME=${NAME:-llm-jax}
IMAGE=${IMAGE:-}
REPO_DIR=${REPO_DIR:-/app}
MODEL=${MODEL:-llama3_8b}
MAX_RESTARTS=${MAX_RESTARTS:-3}
WORKDIR_PVC=${WORKDIR_PVC:-llm-jax-workdir}
WORKDIR_MOUNT=${WORKDIR_MOUNT:-/workdir}
WORKDIR=${WORKDIR:-$WORKDIR_MOUNT/runs/$MODEL}
# The JobSet's name also names its pods and service (and the coordinator's host name): a DNS label.
[[ $NAME =~ ^[a-z]([-a-z0-9]{0,38}[a-z0-9])?$ ]] ||
  die "NAME must be a DNS label (lower-case letters, digits and '-', at most 40), got $(printf '%q' "$NAME")"
if [[ -z $IMAGE ]]; then
  dry_run || die "set IMAGE to a container image with llm_jax installed at $REPO_DIR (launch/k8s/Dockerfile)"
  IMAGE=REGISTRY/llm-jax:$kind
fi
strings=(NAME IMAGE REPO_DIR MODEL TOPOLOGY WORKDIR WORKDIR_PVC WORKDIR_MOUNT) # written as JSON strings
numbers=(MAX_RESTARTS)                                                        # written as they are, once checked
if [[ $kind == gpu ]]; then
  NODES=${NODES:-2}
  GPUS_PER_NODE=${GPUS_PER_NODE:-8}
  TOPOLOGY=${TOPOLOGY:-gpu_cluster}
  PORT=${PORT:-1234}
  numbers+=(NODES GPUS_PER_NODE PORT)
else
  SLICES=${SLICES:-1}
  require_int SLICES 1
  TPU_ACCELERATOR=${TPU_ACCELERATOR:-tpu-v5p-slice}
  TPU_TOPOLOGY=${TPU_TOPOLOGY:-4x4x4}
  HOSTS_PER_SLICE=${HOSTS_PER_SLICE:-16}
  CHIPS_PER_HOST=${CHIPS_PER_HOST:-4}
  if ((SLICES == 1)); then
    TOPOLOGY=${TOPOLOGY:-tpu_v5p_128}
  else
    TOPOLOGY=${TOPOLOGY:-tpu_v5p_128x$SLICES}
  fi
  strings+=(TPU_ACCELERATOR TPU_TOPOLOGY)
  numbers+=(SLICES HOSTS_PER_SLICE CHIPS_PER_HOST)
fi

manifest=$(<"$LAUNCH_REPO/launch/k8s/jobset-$kind.yaml")
fill() { manifest=${manifest//"{{$1}}"/"$2"}; } # quoted: no '&' or pattern character of the value is special
for name in "${numbers[@]}"; do
  if [[ $name == MAX_RESTARTS ]]; then require_int "$name"; else require_int "$name" 1; fi # counts, ports: >= 1
  fill "$name" "${!name}"
done
for name in "${strings[@]}"; do
  value=${!name}
  if [[ $name == MODEL || $name == TOPOLOGY || $name == WORKDIR ]]; then # only inside args, where Kubernetes
    value=${value//\$/\$\$}                                               # reads $(VAR) and '$$' is one '$'
  fi
  value=$(json_string "$value")
  fill "$name" "${value:1:${#value}-2}" # the template has the quotes
done
ARGS="" # the extra llm-jax train arguments: more items of the args list, each a JSON string
for arg in "$@"; do
  ARGS+=", $(json_string "${arg//\$/\$\$}")"
done
fill ARGS "$ARGS"
if [[ $manifest =~ \{\{[A-Z_]+\}\} ]]; then
  die "jobset-$kind.yaml has a placeholder render.sh does not fill: ${BASH_REMATCH[0]}"
fi

if dry_run; then
  printf '%s\n' "$manifest"
else
  printf '%s\n' "$manifest" | kubectl apply -f -
fi
