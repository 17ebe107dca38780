{{/*
Names, labels and derived values shared by the edge chart's templates. Each template renders one Kubernetes
resource; everything computed from more than one value lives here so the resources cannot disagree.
*/}}

{{- define "edge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release name alone when it already contains the chart name, as bitnami does: "edge-eu", not "edge-eu-edge". */}}
{{- define "edge.fullname" -}}
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

{{- define "edge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels never change after the first install (a Deployment's selector is immutable). */}}
{{- define "edge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: edge
{{- end -}}

{{- define "edge.labels" -}}
{{ include "edge.selectorLabels" . }}
helm.sh/chart: {{ include "edge.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edge-adserver
edge-adserver.io/region: {{ .Values.region | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "edge.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "edge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "edge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret the signing keys come from: the operator's, or the one this chart creates. */}}
{{- define "edge.signingKeysSecretName" -}}
{{- if .Values.signingKeys.existingSecret -}}
{{- tpl .Values.signingKeys.existingSecret . -}}
{{- else -}}
{{- printf "%s-signing-keys" (include "edge.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Where publishers reach this PoP: explicit, else the ingress host, else the in-cluster Service. */}}
{{- define "edge.publicUrl" -}}
{{- if .Values.publicUrl -}}
{{- .Values.publicUrl | trimSuffix "/" -}}
{{- else if and .Values.ingress.enabled .Values.ingress.hostname -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.ingress.tls) .Values.ingress.hostname -}}
{{- else -}}
{{- $port := int .Values.service.ports.http -}}
{{- $host := printf "%s.%s.svc.cluster.local" (include "edge.fullname" .) .Release.Namespace -}}
{{- if eq $port 80 -}}
{{- printf "http://%s" $host -}}
{{- else -}}
{{- printf "http://%s:%d" $host $port -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Checks the schema cannot express, failing the render with a message that says what to change. Called from the
Deployment so `helm template` and `helm install` both stop before anything reaches the cluster.
*/}}
{{- define "edge.validateValues" -}}
{{- if and .Values.signingKeys.existingSecret .Values.signingKeys.value -}}
{{- fail "edge: set either signingKeys.existingSecret or signingKeys.value, not both (the keys must have one source of truth)" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.hostname) -}}
{{- fail "edge: ingress.enabled needs ingress.hostname (the host publishers call)" -}}
{{- end -}}
{{- if and .Values.pdb.create .Values.pdb.minAvailable .Values.pdb.maxUnavailable -}}
{{- fail "edge: set pdb.minAvailable or pdb.maxUnavailable, not both (policy/v1 allows one)" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) -}}
{{- fail (printf "edge: autoscaling.maxReplicas (%v) is below autoscaling.minReplicas (%v)" .Values.autoscaling.maxReplicas .Values.autoscaling.minReplicas) -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPU) (not .Values.autoscaling.targetMemory) -}}
{{- fail "edge: autoscaling.enabled needs autoscaling.targetCPU or autoscaling.targetMemory" -}}
{{- end -}}
{{- end -}}
