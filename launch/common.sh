# Shared by the launch scripts (sourced, not run). One dry-run convention for all of them:
#
#   DRY_RUN=1 launch/<script> ...   prints every command, shell-quoted, one per line, instead of running it.
#
# Lines starting with '#' in a dry run's output are comments. Nothing that needs a cluster, a cloud account or the
# network (gcloud, kubectl, sbatch, srun) runs in a dry run.

# The repository root: the parent of launch/.
LAUNCH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

dry_run() {
  case "${DRY_RUN:-0}" in
    0 | "" | false | no) return 1 ;;
    *) return 0 ;;
  esac
}

# Print the arguments as one shell command line, quoting only what needs it (the output pastes into a shell).
quote() {
  local arg out="" sq="'\\''"
  for arg in "$@"; do
    if [[ $arg =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
      out+="$arg "
    else
      out+="'${arg//\'/"$sq"}' "
    fi
  done
  printf '%s\n' "${out% }"
}

# Run a command, or print it in a dry run.
run() {
  if dry_run; then
    quote "$@"
  else
    "$@"
  fi
}

say() { printf '%s\n' "$*" >&2; }
die() {
  say "error: $*"
  exit 2
}

# The interpreter that runs `python -m llm_jax`: $PYTHON, else the repository's .venv, else python3.
llm_jax_python() {
  if [[ -n ${PYTHON:-} ]]; then
    printf '%s\n' "$PYTHON"
  elif [[ -x $LAUNCH_REPO/.venv/bin/python ]]; then
    printf '%s\n' "$LAUNCH_REPO/.venv/bin/python"
  else
    printf '%s\n' python3
  fi
}
