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

# Refuse NAME unless its value is a whole number >= MIN [0]. Bash evaluates `a[$(cmd)]` inside ((...)) and $((...)),
# so a value is checked before any arithmetic uses it, or before it is pasted into a manifest.
require_int() { # NAME [MIN]
  local value=${!1-}
  if ! [[ $value =~ ^(0|[1-9][0-9]{0,8})$ ]] || ((value < ${2:-0})); then
    die "$1 must be a whole number >= ${2:-0}, got $(printf '%q' "$value")"
  fi
}

# The argument as a JSON string (quotes included), which is also a YAML double-quoted scalar: a newline, a quote or
# a '#' in a value stays inside its string instead of ending or rewriting the manifest.
json_string() {
  local s=$1 out="" c i code
  local LC_ALL=C # byte by byte: UTF-8 sequences pass through unchanged
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      '"' | '\') out+="\\$c" ;;
      $'\n') out+='\n' ;;
      $'\t') out+='\t' ;;
      $'\r') out+='\r' ;;
      [[:cntrl:]])
        printf -v code '\\u%04x' "'$c"
        out+=$code
        ;;
      *) out+=$c ;;
    esac
  done
  printf '"%s"\n' "$out"
}
