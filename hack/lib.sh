# Shared by the hack/ scripts: strict mode, pinned versions and the cache layout.
# shellcheck shell=bash
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=versions.env
source "${REPO_ROOT}/hack/versions.env"

# Heavy one-time builds live outside the repository, keyed by version, so a fresh clone
# on the same machine reuses them.
TERTULIA_CACHE="${TERTULIA_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/tertulia}"
TESTBED_VERSION="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_layer-${KUBECTL_LAYER_VERSION}"
TESTBED_DIR="${TERTULIA_CACHE}/testenv/${TESTBED_VERSION}"
WEAVIATE_DIR="${TERTULIA_CACHE}/weaviate/${WEAVIATE_VERSION}"
# The S3-compatible server of the backup tests, in an environment of its own (hack/s3).
MOTO_DIR="${TERTULIA_CACHE}/moto/$(sha256sum "${REPO_ROOT}/hack/s3/requirements.txt" | cut -c1-12)"
COREDNS_DIR="${TERTULIA_CACHE}/coredns/${COREDNS_VERSION}"
KUBE_ROUTER_DIR="${TERTULIA_CACHE}/kube-router/${KUBE_ROUTER_VERSION}-$(sha256sum "${REPO_ROOT}/hack/kube-router/go.sum" | cut -c1-8)"
UV_DIR="${TERTULIA_CACHE}/uv/${UV_VERSION}"
REDIS_DIR="${TERTULIA_CACHE}/redis/${REDIS_VERSION}"
# For any x86-64 with AVX2, so one cache serves every machine (hack/build-llama-server.sh).
LLAMA_SERVER_DIR="${TERTULIA_CACHE}/llama-server/${LLAMACPP_RELEASE}-avx2"
UV="${UV_DIR}/bin/uv"

# download_checked URL SHA256 TARGET: URL's bytes into TARGET, refused unless they hash to SHA256.
download_checked() {
  python3 - "$@" <<'PYTHON'
import hashlib, sys, urllib.request
url, expected, target = sys.argv[1:]
data = urllib.request.urlopen(url, timeout=600).read()
if hashlib.sha256(data).hexdigest() != expected:
    sys.exit(f"{url} does not match its pinned SHA-256")
open(target, "wb").write(data)
PYTHON
}

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Each step of `make test`'s setup that builds something says how long it took: one line
# "STEP SECONDS" in the file TERTULIA_TIMINGS names (hack/test.sh prints them at the end).
timed() {
  local step="$1" started=${SECONDS}
  shift
  "$@"
  local status=$?
  [[ -n "${TERTULIA_TIMINGS:-}" ]] && printf '%s %d\n' "${step}" $((SECONDS - started)) >>"${TERTULIA_TIMINGS}"
  return ${status}
}
