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

{{/* An image's repository in the mirror of imageRegistry: its registry host replaced. */}}
{{- define "tertulia.mirrored" -}}
{{- $repository := .repository -}}
{{- if .registry -}}
{{- $parts := splitn "/" 2 $repository -}}
{{- if and (gt (len (splitList "/" $repository)) 1) (or (contains "." $parts._0) (contains ":" $parts._0) (eq $parts._0 "localhost")) -}}
{{- $repository = $parts._1 -}}
{{- end -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .registry) $repository -}}
{{- end -}}
{{- $repository -}}
{{- end -}}

{{- define "tertulia.image" -}}
{{- printf "%s:%s" (include "tertulia.mirrored" (dict "registry" .Values.imageRegistry "repository" .Values.image.repository)) (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tertulia.workloadImage" -}}
{{- printf "%s:%s" (include "tertulia.mirrored" (dict "registry" .Values.imageRegistry "repository" .Values.workloadImage.repository)) (default .Chart.AppVersion .Values.workloadImage.tag) -}}
{{- end -}}

{{/* Who may scrape metrics behind the ChatBots' NetworkPolicies, as JSON; empty for nobody. */}}
{{- define "tertulia.scrapers" -}}
{{- if .Values.metrics.scrapers -}}
{{- toJson .Values.metrics.scrapers -}}
{{- else if .Values.metrics.serviceMonitor.enabled -}}
{{- toJson (dict "namespaceSelector" (dict "matchLabels" (dict "kubernetes.io/metadata.name" "monitoring"))) -}}
{{- end -}}
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
# What a ChatBot's gateway is granted when it autoscales the model (a Role the operator
# renders, for that ChatBot alone): Kubernetes lets the operator grant only what it holds.
- apiGroups: [tertulia.dev]
  resources: [chatbots/scale]
  verbs: [get, patch]
# Events on the ChatBots.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# Secrets: those a ChatBot names (platform tokens) and those the operator generates (the
# gateway's and Weaviate's API keys, created once, never updated) are watched, so a rotated
# or deleted one shows in status within seconds and rolls the pods that read it; of each,
# only its version and whether a key exists are used, never a value. Patch: a Secret a
# ChatBot names is labelled for the watch, and a generated Secret made by an older release
# gets the keys it lacks, its existing keys untouched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# Children watched for drift: server-side applied, listed to prune, deleted when dropped.
# ConfigMaps are also read (a knowledge base's source documents, to re-ingest on a change)
# and labelled so the watch sees their changes; a ChatBot's own ConfigMap and
# ServiceAccount are never dropped, so never deleted.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [list, watch, create, patch]
- apiGroups: [""]
  resources: [services, persistentvolumeclaims]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [deployments, statefulsets]
  verbs: [list, watch, create, patch, delete]
# Ingest Jobs: watched for their outcome; the knowledge base's backup CronJob.
- apiGroups: [batch]
  resources: [jobs, cronjobs]
  verbs: [list, watch, create, patch, delete]
# The gateway's Role and RoleBinding, when it autoscales the model.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [list, watch, create, patch, delete]
# The ChatBots' own Pods (by label), watched so status says why one cannot run: the
# scheduler's message, a failed image pull, a crash loop's last log line (its termination
# message; no log is read); a failed ingest Job's Pods are listed for what they said.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [networking.k8s.io]
  resources: [ingresses, networkpolicies]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [list, watch, create, patch, delete]
# One per component that runs several replicas, so a node drain takes one at a time.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [list, watch, create, patch, delete]
{{- if include "tertulia.peering" . }}
# kopf's peering between replicas, when watching namespaces.
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}
