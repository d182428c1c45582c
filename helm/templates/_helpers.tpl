{{/*
Template helpers. The chart sticks to a subset of Helm's template language that test/helm/render.ts
implements with Helm's semantics (see helm/README.md): the chart's tests render it with that renderer.
*/}}

{{/* Chart name, at most 63 characters (a DNS label). */}}
{{- define "registry-mirror.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource name prefix: the release name, plus the chart name unless the release name contains it. */}}
{{- define "registry-mirror.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every resource. */}}
{{- define "registry-mirror.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "registry-mirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector of the mirror pods. The component label keeps the containerd-hosts pods out of the Service. */}}
{{- define "registry-mirror.selectorLabels" -}}
app.kubernetes.io/name: {{ include "registry-mirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: mirror
{{- end -}}

{{/* Selector of the containerd-hosts DaemonSet pods. */}}
{{- define "registry-mirror.hostsSelectorLabels" -}}
app.kubernetes.io/name: {{ include "registry-mirror.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: containerd-hosts
{{- end -}}

{{- define "registry-mirror.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The mirror's config file: .Values.config as given, each upstream with the credential files of its Secret
(mounted by the workload in mirror.yaml under /etc/registry-mirror/credentials/<upstream>/). listen, storage.path,
storage.s3, redis and cluster come from environment variables the pods get, which the mirror's loader applies over the file.
*/}}
{{- define "registry-mirror.config" -}}
{{- with omit .Values.config "upstreams" }}
{{- toYaml . }}
{{- end }}
upstreams:
{{- range $name, $upstream := .Values.config.upstreams }}
  {{ $name | quote }}:
    {{- toYaml $upstream | nindent 4 }}
    {{- with index $.Values.upstreamCredentials $name }}
    credentials:
      usernameFile: {{ printf "/etc/registry-mirror/credentials/%s/%s" $name (default "username" .usernameKey) | quote }}
      passwordFile: {{ printf "/etc/registry-mirror/credentials/%s/%s" $name (default "password" .passwordKey) | quote }}
    {{- end }}
{{- end }}
{{- end -}}
