#!/usr/bin/env bash
# `make demo`: a local cluster, the two-stage word count from examples/word-count, one more
# file that runs exactly one datum, the provenance of the result, and the cluster stopped.
#
# Runs in a fresh temporary $TUSK_HOME (deleted afterwards) unless TUSK_HOME is set; a cluster
# already running there is left running.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TUSK="$ROOT/.venv/bin/tusk"
EXAMPLE="$ROOT/examples/word-count"
TIMEOUT=120

# The cluster is found through $TUSK_HOME/config.toml only, never a stray TUSK_*_URL.
for name in $(env | sed -n 's/^\(TUSK_[A-Z0-9_]*\)=.*/\1/p'); do
    [ "$name" = TUSK_HOME ] || unset "$name"
done
if [ -n "${TUSK_HOME:-}" ]; then
    TEMP_HOME=""
else
    TEMP_HOME="$(mktemp -d /tmp/tusk-demo.XXXXXX)"
    export TUSK_HOME="$TEMP_HOME/home"
fi

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ tusk %s\n' "$*"; "$TUSK" "$@"; }
fail() { echo "demo: $*" >&2; exit 1; }

if [ ! -x "$TUSK" ]; then
    fail "$TUSK is missing: run 'make demo' (it installs Tusk into .venv first)"
fi

STARTED=""
cleanup() {
    status=$?
    if [ -n "$STARTED" ]; then
        step "Stopping the cluster"
        "$TUSK" down || true
    fi
    if [ -n "$TEMP_HOME" ]; then
        rm -rf "$TEMP_HOME"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait until PIPELINE has at least N jobs, then wait for the newest and insist it succeeded.
wait_for_job() {
    local pipeline=$1 want=$2 deadline=$((SECONDS + TIMEOUT)) job state
    until [ "$("$TUSK" list job -p "$pipeline" | tail -n +2 | wc -l)" -ge "$want" ]; do
        [ "$SECONDS" -lt "$deadline" ] || fail "no job $want of pipeline $pipeline after ${TIMEOUT}s"
        sleep 0.2
    done
    job="$("$TUSK" list job -p "$pipeline" | awk 'NR == 2 { print $1 }')"
    state="$("$TUSK" wait job "$pipeline@$job" --timeout "$TIMEOUT" | sed -n 's/^State: //p')"
    if [ "$state" != JOB_SUCCESS ]; then
        "$TUSK" inspect job "$pipeline@$job" >&2
        fail "job $pipeline@$job did not succeed (tusk logs -p $pipeline --job $job)"
    fi
    echo "job $pipeline@$job succeeded"
}

step "Starting a local cluster in $TUSK_HOME"
if "$TUSK" status -o json | grep -q '"running": true'; then
    echo "a cluster is already running there; it stays running afterwards"
else
    STARTED=yes
    run up --detach
fi

step "A repo of texts, and the two pipelines of examples/word-count"
run create repo texts
files=()
for file in "$EXAMPLE"/data/*.txt; do files+=(-f "$file"); done
run put file texts@master "${files[@]}"
run create pipeline -f "$EXAMPLE/pipelines.yaml"
run list pipeline
wait_for_job count 1
wait_for_job reduce 1

step "The outputs: words per text (count), then summed over all texts (reduce)"
run list file count@master
run get file count@master:/rain.txt
run get file reduce@master:/words
printf 'total: '
"$TUSK" get file reduce@master:/total

step "One more text: only its datum runs, the other three are reused"
run put file texts@master -f "$EXAMPLE/extra/mill.txt"
wait_for_job count 2
wait_for_job reduce 2
run list job
count_job="$("$TUSK" list job -p count | awk 'NR == 2 { print $1 }')"
run list datum "count@$count_job"
run get file reduce@master:/total

step "Provenance: which input commits made the final result"
run inspect commit reduce@master
commit="reduce@master"
while provenance="$("$TUSK" inspect commit "$commit" | sed -n 's/^Provenance: //p')" \
    && [ -n "$provenance" ] && [ "$provenance" != "-" ]; do
    echo "$commit  <-  $provenance"
    commit="${provenance%%,*}"
done
run inspect commit reduce@master -o json

step "Done"
