{{/*
Names and labels shared by every template. The selector is the name label
alone, as the kustomize manifests have always had it (a DaemonSet's
selector cannot change in place); the instance lock makes a second release
on the same nodes pointless anyway.
*/}}

{{/* The chart's name, app.kubernetes.io/name. */}}
{{- define "imds-observer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name when it already names the chart. */}}
{{- define "imds-observer.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "imds-observer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imds-observer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels of every object: the name, then the user's commonLabels. */}}
{{- define "imds-observer.labels" -}}
app.kubernetes.io/name: {{ include "imds-observer.name" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* metadata.annotations of every object, when the user gives any. */}}
{{- define "imds-observer.annotations" -}}
{{- with .Values.commonAnnotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The image: repository@digest when a digest is given, else :tag. */}}
{{- define "imds-observer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* A list as the items of a YAML flow sequence: "a", "b". */}}
{{- define "imds-observer.flowList" -}}
{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ $v | quote }}{{ end }}
{{- end }}
