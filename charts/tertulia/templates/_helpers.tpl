{{/* The release's full name, at most 63 characters. */}}
{{- define "tertulia.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tertulia.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tertulia.labels" -}}
{{ include "tertulia.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tertulia
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tertulia.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tertulia.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tertulia.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tertulia.workloadImage" -}}
{{- printf "%s:%s" .Values.workloadImage.repository (default .Chart.AppVersion .Values.workloadImage.tag) -}}
{{- end -}}

{{/* Peering is on with more than one replica; its objects are named after the release. */}}
{{- define "tertulia.peering" -}}
{{- if gt (int .Values.replicaCount) 1 -}}{{ include "tertulia.fullname" . }}{{- end -}}
{{- end -}}

{{/*
What the operator does in the namespaces it serves, verb by verb; the end-to-end tests run
the operator with exactly these rules and show each removed verb breaks a check.
*/}}
{{- define "tertulia.namespacedRules" -}}
# ChatBots: watched, annotated with handler progress, and their status written.
- apiGroups: [tertulia.dev]
  resources: [chatbots]
  verbs: [get, list, watch, patch]
- apiGroups: [tertulia.dev]
  resources: [chatbots/status]
  verbs: [patch]
# Events on the ChatBots.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Platform tokens: only whether a key exists is read. The generated API key Secrets (the
# gateway's, Weaviate's) are created once and never updated.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create]
# Children watched for drift: server-side applied, listed to prune, deleted when dropped.
# ConfigMaps are also read: a knowledge base's source documents, to re-ingest on a change.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [list, watch, create, patch, delete]
# Children applied on every reconcile.
- apiGroups: [""]
  resources: [serviceaccounts, persistentvolumeclaims]
  verbs: [list, create, patch, delete]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [ingresses, networkpolicies]
  verbs: [list, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, create, patch, delete]
{{- if include "tertulia.peering" . }}
# kopf's peering between replicas, when watching namespaces.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
