#!/usr/bin/env bash
# Starts or stops the test bed's control plane by hand for a developer.
#   hack/testenv.sh up [real]   start it in the background and print the KUBECONFIG line;
#                               `real` adds the real node and the images of `make images`
#   hack/testenv.sh down        stop every process it started
#   hack/testenv.sh status      say whether it runs
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STATE="${REPO_ROOT}/.testenv"
PID_FILE="${STATE}/supervisor.pid"
PYTHON="${REPO_ROOT}/.venv/bin/python"

running() { [[ -f "${PID_FILE}" ]] && kill -0 "$(cat "${PID_FILE}")" 2>/dev/null; }

up() {
  if running; then
    log "the test bed already runs"
  else
    [[ -x "${PYTHON}" ]] || die "no .venv yet: run 'make install' first"
    bash "${REPO_ROOT}/hack/build-testbed.sh" >/dev/null
    local options=()
    if [[ "${1:-}" == real ]]; then
      log "building the real node's images (make images)"
      options=(--real-node "$(bash "${REPO_ROOT}/hack/build-images.sh")")
    fi
    mkdir -p "${STATE}"
    rm -f "${STATE}/ready"
    log "starting the control plane (logs: ${STATE}/supervisor.log)"
    # Every descriptor redirected, so the caller's pipes close as soon as this script ends.
    (cd "${REPO_ROOT}" && exec setsid "${PYTHON}" -m tests.testbed serve "${STATE}" "${options[@]}") \
      </dev/null >"${STATE}/supervisor.log" 2>&1 &
    echo $! >"${PID_FILE}"
    local waited=0
    until [[ -f "${STATE}/ready" ]]; do
      running || { tail -n 30 "${STATE}/supervisor.log" >&2; die "the control plane did not start"; }
      ((waited++ < 300)) || die "the control plane was not ready after 150s"
      sleep 0.5
    done
    cat "${STATE}/supervisor.log" >&2
  fi
  echo "export KUBECONFIG=${STATE}/kubeconfig PATH=${TESTBED_DIR}/bin:\$PATH"
}

down() {
  if running; then
    local pid
    pid="$(cat "${PID_FILE}")"
    kill -TERM "${pid}"
    while kill -0 "${pid}" 2>/dev/null; do sleep 0.2; done
    log "stopped"
  fi
  rm -rf "${STATE}"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down ;;
  status) if running; then echo "running: $(cat "${STATE}/ready" 2>/dev/null)"; else echo "stopped"; fi ;;
  *) die "usage: $0 up|down|status" ;;
esac
