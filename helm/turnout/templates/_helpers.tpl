{{/*
Names. Every resource is `<fullname>-<component>`, so the fullname is kept short enough
(schema: fullnameOverride <= 40) for the longest suffix, `-operator-metrics`.
*/}}
{{- define "turnout.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* `<fullname>-<component>`. Call with (dict "ctx" $ "component" "router"). */}}
{{- define "turnout.componentName" -}}
{{- printf "%s-%s" (include "turnout.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "turnout.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels. Call with (dict "ctx" $ "component" "operator"); the component is optional.
*/}}
{{- define "turnout.selectorLabels" -}}
app.kubernetes.io/name: {{ include "turnout.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "turnout.labels" -}}
helm.sh/chart: {{ include "turnout.chart" .ctx }}
{{ include "turnout.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: turnout
{{- end }}

{{- define "turnout.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* ServiceAccount of a component. Call with (dict "ctx" $ "component" "router"). */}}
{{- define "turnout.serviceAccountName" -}}
{{- $sa := (index .ctx.Values .component).serviceAccount }}
{{- if $sa.create }}
{{- default (include "turnout.componentName" .) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/* The kopf peering object's name: `turnout operator --peering` and the object agree. */}}
{{- define "turnout.peeringName" -}}
turnout
{{- end }}

{{/*
Namespaces watched, as a JSON list; empty means every namespace. The router watches the
operator's namespaces unless router.watchNamespaces says otherwise.
*/}}
{{- define "turnout.operatorNamespaces" -}}
{{- .Values.operator.watchNamespaces | uniq | toJson }}
{{- end }}

{{- define "turnout.routerNamespaces" -}}
{{- default .Values.operator.watchNamespaces .Values.router.watchNamespaces | uniq | toJson }}
{{- end }}

{{/* `--all-namespaces`, or `--namespace <ns>` per namespace, as YAML list items. */}}
{{- define "turnout.namespaceArgs" -}}
{{- $namespaces := fromJsonArray . }}
{{- if $namespaces }}
{{- range $namespaces }}
- --namespace
- {{ . | quote }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end }}

{{/*
Pod and container security: the restricted Pod Security Standard. The image's user is
10001:10001 and its root filesystem is read-only; writable paths are emptyDirs.
*/}}
{{- define "turnout.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "turnout.containerSecurityContext" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Writable scratch space: /tmp, and the image's TURNOUT_HOME (/var/lib/turnout). */}}
{{- define "turnout.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: state
  mountPath: /var/lib/turnout
{{- end }}

{{- define "turnout.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
- name: state
  emptyDir:
    sizeLimit: 1Gi
{{- end }}

{{/* Environment variables from a name: value map, sorted by name. */}}
{{- define "turnout.env" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* The router's Secret: the chart's, or the one named by router.existingSecret. */}}
{{- define "turnout.routerSecretName" -}}
{{- default (include "turnout.componentName" (dict "ctx" . "component" "router")) .Values.router.existingSecret }}
{{- end }}

{{/* A keys file with one key, `admin`, for every model and action. Call with the key. */}}
{{- define "turnout.adminKeysFile" -}}
# turnout router API keys: SHA-256 hashes only, never the keys. `turnout keys create NAME` adds one.
keys:
- name: admin
  sha256: {{ sha256sum . }}
  models: ['*']
  actions: [infer, feedback, admin]
{{ end }}
