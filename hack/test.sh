#!/usr/bin/env bash
# `make test`: install and build what the tests need (each once, cached by version), run
# every tier, and end with one line per setup step and per tier: where the time went, so the
# next change that costs time shows itself.
#   TEST_WORKERS (4): pytest-xdist workers (on 2 cores 4 beat 3, and 3 beat 2:
#   docs/testbed.md); further arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TERTULIA_TIMINGS="$(mktemp -t tertulia-timings.XXXXXX)"
export TERTULIA_TIMINGS
trap 'rm -f "${TERTULIA_TIMINGS}"' EXIT
started=${SECONDS}

report() {
  local status=$1
  printf '\n== where the time went (seconds)\n'
  # A step that several scripts run (each checks its cache) is one line: its seconds summed.
  awk '!($1 in seconds) { order[++n] = $1 } { seconds[$1] += $2 }
    END { for (i = 1; i <= n; i++) printf "  %-26s %7d\n", order[i], seconds[order[i]] }' \
    "${TERTULIA_TIMINGS}"
  printf '  %-26s %7d\n' total $((SECONDS - started))
  return "${status}"
}

timed install bash "${REPO_ROOT}/hack/bootstrap.sh"
timed testbed bash "${REPO_ROOT}/hack/build-testbed.sh" >/dev/null
timed images bash "${REPO_ROOT}/hack/build-images.sh" >/dev/null
status=0
timed pytest "${REPO_ROOT}/.venv/bin/pytest" -n "${TEST_WORKERS:-4}" --dist loadscope \
  --no-loadscope-reorder "$@" || status=$?
report "${status}"
