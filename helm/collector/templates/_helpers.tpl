{{/*
Names, labels and derived values shared by the collector chart's templates. Each template renders one
Kubernetes resource; everything computed from more than one value lives here so the resources cannot disagree.
*/}}

{{- define "collector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release name alone when it already contains the chart name, as bitnami does. */}}
{{- define "collector.fullname" -}}
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

{{- define "collector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels never change after the first install (a Deployment's selector is immutable). */}}
{{- define "collector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "collector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: collector
{{- end -}}

{{- define "collector.labels" -}}
{{ include "collector.selectorLabels" . }}
helm.sh/chart: {{ include "collector.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edge-adserver
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "collector.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "collector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "collector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when store.url names a chdb directory (chdb:///dir or a bare path), "" for a ClickHouse server. */}}
{{- define "collector.storeIsChdb" -}}
{{- if not (regexMatch "^(?i)(https?|clickhouse)://" .Values.store.url) -}}true{{- end -}}
{{- end -}}

{{/* The chart-created Secret holding the ClickHouse password. */}}
{{- define "collector.secretName" -}}
{{- printf "%s-clickhouse" (include "collector.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "collector.createsStorePassword" -}}
{{- if and (not (include "collector.storeIsChdb" .)) .Values.store.username (not .Values.store.existingSecret) .Values.store.password -}}true{{- end -}}
{{- end -}}

{{- define "collector.storeSecretName" -}}
{{- if .Values.store.existingSecret -}}
{{- tpl .Values.store.existingSecret . -}}
{{- else -}}
{{- include "collector.secretName" . -}}
{{- end -}}
{{- end -}}

{{/*
ADSERVER_CP_STORE_URL and, for a ClickHouse server with a user, the variables it is assembled from. Kubernetes
expands $(VAR) from variables defined earlier in the list, so the password reaches the process from the Secret
and is never written into the Deployment.
*/}}
{{- define "collector.storeEnv" -}}
{{- $url := .Values.store.url -}}
{{- if and (not (include "collector.storeIsChdb" .)) .Values.store.username -}}
{{- $parts := splitn "://" 2 $url -}}
- name: CLICKHOUSE_USER
  value: {{ .Values.store.username | quote }}
- name: CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "collector.storeSecretName" . }}
      key: {{ .Values.store.existingSecretPasswordKey | quote }}
- name: ADSERVER_CP_STORE_URL
  value: {{ printf "%s://$(CLICKHOUSE_USER):$(CLICKHOUSE_PASSWORD)@%s" $parts._0 $parts._1 | quote }}
{{- else }}
- name: ADSERVER_CP_STORE_URL
  value: {{ $url | quote }}
{{- end }}
{{- end -}}

{{/*
The collector exists for ClickHouse servers only: chdb allows one process per data directory, and that process is
the control plane. Fails the render with a message that says what to do instead.
*/}}
{{- define "collector.validateValues" -}}
{{- $url := .Values.store.url -}}
{{- if include "collector.storeIsChdb" . -}}
{{- fail (printf "collector: store.url %q is a chdb directory, not a ClickHouse server. chdb allows one process per data directory, so with chdb the collector runs inside the control plane (control-plane chart, collector.embedded=true) and this chart must not be installed. Install it only with a ClickHouse server URL: http(s)://host:8123/<db> or clickhouse://host:8123/<db>" $url) -}}
{{- end -}}
{{- if contains "@" $url -}}
{{- fail "collector: store.url must not carry credentials; set store.username and store.password (or store.existingSecret) so the password stays in a Secret" -}}
{{- end -}}
{{- if regexMatch "^[A-Za-z]+://[^/]*:(9000|9440)(/|$)" $url -}}
{{- fail (printf "collector: store.url %q uses a ClickHouse native-protocol port; the collector speaks HTTP, use 8123 (or 8443 for TLS)" $url) -}}
{{- end -}}
{{- if and .Values.store.username (not .Values.store.existingSecret) (not .Values.store.password) -}}
{{- fail "collector: store.username is set but neither store.password nor store.existingSecret gives its password" -}}
{{- end -}}
{{- if and .Values.store.existingSecret .Values.store.password -}}
{{- fail "collector: set either store.existingSecret or store.password, not both" -}}
{{- end -}}
{{- range .Values.leafRegions -}}
{{- if not (has . $.Values.regions) -}}
{{- fail (printf "collector: leafRegions names %q, which is not in regions (%s); add it to regions or drop it from leafRegions (ADSERVER_CP_LEAF_REGIONS must be a subset of ADSERVER_CP_REGIONS)" . (join ", " $.Values.regions)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
