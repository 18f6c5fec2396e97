#!/usr/bin/env bash
# Installs what Tertulia's development needs on a fresh machine: system packages, uv (hash
# checked), and the locked Python environment in .venv. Safe to run again: it only fills gaps.
#   hack/bootstrap.sh          what `make test`, `make run` and `make bench` need
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ensure_system_packages() {
  # Each program the tests run or the llama.cpp build needs, and the Debian package with it;
  # the real node's runtime (containerd, runc, the CNI plugins, iptables, conntrack) and its
  # image tools (podman, mmdebstrap) and the benchmarks' load generator (wrk, which
  # `make test` runs too, in the benchmarks' quick mode) among them.
  local -A package_of=([redis-server]=redis-server [cmake]=cmake [g++]=g++ [git]=git [npm]=npm
    [chromium]=chromium [chromedriver]=chromium-driver [containerd]=containerd [runc]=runc
    [/usr/lib/cni/bridge]=containernetworking-plugins [iptables]=iptables
    [conntrack]=conntrack [ipset]=ipset [podman]=podman [mmdebstrap]=mmdebstrap [wrk]=wrk)
  local program missing=()
  for program in "${!package_of[@]}"; do
    command -v "${program}" >/dev/null || [[ -x "${program}" ]] || missing+=("${package_of[${program}]}")
  done
  ((${#missing[@]})) || return 0
  log "installing system packages: ${missing[*]}"
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_uv() {
  [[ -x "${UV}" ]] && return
  log "installing uv ${UV_VERSION} into ${UV_DIR}"
  python3 -m venv "${UV_DIR}"
  "${UV_DIR}/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    --require-hashes -r "${REPO_ROOT}/hack/requirements-uv.txt"
}

sync_environment() {
  # Every dependency is a wheel from the lock: nothing compiles (llama.cpp is built once,
  # apart, by hack/build-llama-server.sh).
  export UV_PYTHON_DOWNLOADS=never
  # uv revalidates a cached download once its HTTP freshness has run out: an offline attempt
  # first reuses what the cache holds, and only what is missing is fetched.
  (cd "${REPO_ROOT}" && { "${UV}" sync --quiet --locked --all-extras --offline 2>/dev/null \
    || "${UV}" sync --quiet --locked --all-extras; })
}

ensure_dockerfilelint() {
  # The Dockerfile linter the tests run, from npm with the integrity hashes of its lock.
  local dir="${TERTULIA_CACHE}/tools/dockerfilelint-$(sha256sum "${REPO_ROOT}/hack/dockerfilelint/package-lock.json" | cut -c1-12)"
  [[ -x "${dir}/node_modules/.bin/dockerfilelint" ]] && return
  log "installing dockerfilelint into ${dir}"
  mkdir -p "${dir}"
  cp "${REPO_ROOT}/hack/dockerfilelint/package.json" "${REPO_ROOT}/hack/dockerfilelint/package-lock.json" "${dir}/"
  (cd "${dir}" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
}

ensure_system_packages
ensure_uv
sync_environment
ensure_dockerfilelint
