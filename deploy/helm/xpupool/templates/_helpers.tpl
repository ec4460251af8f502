{{/* Common names and labels. */}}
{{- define "xpupool.name" -}}xpupool{{- end -}}

{{- define "xpupool.fullname" -}}
{{- if contains "xpupool" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-xpupool" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "xpupool.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "xpupool.labels" -}}
app.kubernetes.io/name: {{ include "xpupool.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: xpupool
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "xpupool.selector" -}}
app.kubernetes.io/name: {{ include "xpupool.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "xpupool.webhookService" -}}{{ include "xpupool.fullname" . }}-webhook{{- end -}}
{{- define "xpupool.webhookSecret" -}}{{ include "xpupool.fullname" . }}-webhook-tls{{- end -}}
{{- define "xpupool.webhookConfiguration" -}}{{ include "xpupool.fullname" . }}{{- end -}}
