#!/usr/bin/env bash
# Prints manifests/install.yaml: the chart's defaults rendered for namespace tertulia-system,
# CRDs included, after the Namespace itself. `make generate` writes it; a test re-renders it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# helm alone: rendering needs nothing else the test bed builds.
BIN="$(bash "${REPO_ROOT}/hack/build-testbed.sh" helm)"
cat <<'YAML'
# Tertulia operator, every namespace served, with the chart's default values.
# Generated from charts/tertulia by hack/render-install.sh; do not edit by hand.
#   kubectl apply --server-side -f manifests/install.yaml
apiVersion: v1
kind: Namespace
metadata:
  name: tertulia-system
  labels:
    pod-security.kubernetes.io/enforce: restricted
YAML
HOME="$(mktemp -d)" "${BIN}/helm" template tertulia "${REPO_ROOT}/charts/tertulia" \
  --namespace tertulia-system --include-crds
