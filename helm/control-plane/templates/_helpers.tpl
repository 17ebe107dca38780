{{/*
Names, labels and derived values shared by the control-plane chart's templates. Each template renders one
Kubernetes resource; everything computed from more than one value lives here so the resources cannot disagree.
*/}}

{{- define "cp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release name alone when it already contains the chart name, as bitnami does. */}}
{{- define "cp.fullname" -}}
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

{{- define "cp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels never change after the first install (a Deployment's selector is immutable). */}}
{{- define "cp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cp.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "cp.labels" -}}
{{ include "cp.selectorLabels" . }}
helm.sh/chart: {{ include "cp.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edge-adserver
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "cp.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "cp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "cp.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when store.url names a chdb directory (chdb:///dir or a bare path), "" for a ClickHouse server. */}}
{{- define "cp.storeIsChdb" -}}
{{- if not (regexMatch "^(?i)(https?|clickhouse)://" .Values.store.url) -}}true{{- end -}}
{{- end -}}

{{/* The chdb data directory, an absolute path inside the container. */}}
{{- define "cp.chdbPath" -}}
{{- if hasPrefix "chdb://" .Values.store.url -}}
{{- trimPrefix "chdb://" .Values.store.url -}}
{{- else -}}
{{- .Values.store.url -}}
{{- end -}}
{{- end -}}

{{/* The chart-created Secret, holding whichever of the admin token and the ClickHouse password it manages. */}}
{{- define "cp.secretName" -}}
{{- printf "%s-secrets" (include "cp.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cp.createsAdminToken" -}}
{{- if and .Values.adminToken.enabled (not .Values.adminToken.existingSecret) -}}true{{- end -}}
{{- end -}}

{{- define "cp.createsStorePassword" -}}
{{- if and (not (include "cp.storeIsChdb" .)) .Values.store.username (not .Values.store.existingSecret) .Values.store.password -}}true{{- end -}}
{{- end -}}

{{- define "cp.adminTokenSecretName" -}}
{{- if .Values.adminToken.existingSecret -}}
{{- tpl .Values.adminToken.existingSecret . -}}
{{- else -}}
{{- include "cp.secretName" . -}}
{{- end -}}
{{- end -}}

{{- define "cp.storeSecretName" -}}
{{- if .Values.store.existingSecret -}}
{{- tpl .Values.store.existingSecret . -}}
{{- else -}}
{{- include "cp.secretName" . -}}
{{- end -}}
{{- end -}}

{{- define "cp.claimName" -}}
{{- default (printf "%s-chdb" (include "cp.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{/*
ADSERVER_CP_STORE_URL and, for a ClickHouse server with a user, the variables it is assembled from. Kubernetes
expands $(VAR) from variables defined earlier in the list, so the password reaches the process from the Secret
and is never written into the Deployment.
*/}}
{{- define "cp.storeEnv" -}}
{{- $url := .Values.store.url -}}
{{- if and (not (include "cp.storeIsChdb" .)) .Values.store.username -}}
{{- $parts := splitn "://" 2 $url -}}
- name: CLICKHOUSE_USER
  value: {{ .Values.store.username | quote }}
- name: CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "cp.storeSecretName" . }}
      key: {{ .Values.store.existingSecretPasswordKey | quote }}
- name: ADSERVER_CP_STORE_URL
  value: {{ printf "%s://$(CLICKHOUSE_USER):$(CLICKHOUSE_PASSWORD)@%s" $parts._0 $parts._1 | quote }}
{{- else }}
- name: ADSERVER_CP_STORE_URL
  value: {{ $url | quote }}
{{- end }}
{{- end -}}

{{/*
Checks the schema cannot express, failing the render with a message that says what to change. They mirror the
process's own start-up checks (control_plane.state.check_topology, control_plane.storage.parse_store_url), so a
release that renders also starts.
*/}}
{{- define "cp.validateValues" -}}
{{- $url := .Values.store.url -}}
{{- if contains "@" $url -}}
{{- fail "control-plane: store.url must not carry credentials; set store.username and store.password (or store.existingSecret) so the password stays in a Secret" -}}
{{- end -}}
{{- if include "cp.storeIsChdb" . -}}
{{- if and (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://" $url) (not (hasPrefix "chdb://" $url)) -}}
{{- fail (printf "control-plane: store.url %q has an unsupported scheme; use chdb:///<dir>, http(s)://host:port/<db> or clickhouse://host:port/<db>" $url) -}}
{{- end -}}
{{- $path := include "cp.chdbPath" . -}}
{{- if not (hasPrefix "/" $path) -}}
{{- fail (printf "control-plane: store.url %q must name an absolute chdb directory, written chdb:///absolute/path (three slashes)" $url) -}}
{{- end -}}
{{- $mount := .Values.persistence.mountPath | trimSuffix "/" -}}
{{- if not (hasPrefix (printf "%s/" $mount) $path) -}}
{{- fail (printf "control-plane: the chdb directory %s must lie under persistence.mountPath %s (the only writable volume; the root filesystem is read-only)" $path $mount) -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- fail (printf "control-plane: replicaCount is %v but store.url is a chdb directory; chdb allows one process per data directory, so run one replica or use a ClickHouse server URL" .Values.replicaCount) -}}
{{- end -}}
{{- if not .Values.collector.embedded -}}
{{- fail "control-plane: collector.embedded is false but store.url is a chdb directory; chdb allows one process per data directory, so the collector must run inside the control plane (or use a ClickHouse server URL)" -}}
{{- end -}}
{{- else -}}
{{- if regexMatch "^[A-Za-z]+://[^/]*:(9000|9440)(/|$)" $url -}}
{{- fail (printf "control-plane: store.url %q uses a ClickHouse native-protocol port; the control plane speaks HTTP, use 8123 (or 8443 for TLS)" $url) -}}
{{- end -}}
{{- if and .Values.store.username (not .Values.store.existingSecret) (not .Values.store.password) -}}
{{- fail "control-plane: store.username is set but neither store.password nor store.existingSecret gives its password" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.adminToken.existingSecret .Values.adminToken.value -}}
{{- fail "control-plane: set either adminToken.existingSecret or adminToken.value, not both" -}}
{{- end -}}
{{- if and .Values.store.existingSecret .Values.store.password -}}
{{- fail "control-plane: set either store.existingSecret or store.password, not both" -}}
{{- end -}}
{{- if and .Values.ingress.enabled (not .Values.ingress.hostname) -}}
{{- fail "control-plane: ingress.enabled needs ingress.hostname" -}}
{{- end -}}
{{- if ge (float64 .Values.minCtr) (float64 .Values.maxPriorCtr) -}}
{{- fail (printf "control-plane: minCtr (%v) must be below maxPriorCtr (%v): until a click model ships, every ad is predicted at its declared prior, capped at maxPriorCtr, so a floor there would leave nothing to show (the process refuses ADSERVER_CP_MIN_CTR >= ADSERVER_CP_MAX_PRIOR_CTR)" .Values.minCtr .Values.maxPriorCtr) -}}
{{- end -}}
{{- range .Values.leafRegions -}}
{{- if not (has . $.Values.regions) -}}
{{- fail (printf "control-plane: leafRegions names %q, which is not in regions (%s); add it to regions or drop it from leafRegions (ADSERVER_CP_LEAF_REGIONS must be a subset of ADSERVER_CP_REGIONS)" . (join ", " $.Values.regions)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
A number as the process's settings parse it: whole ones as digits (Helm reads values as float64, which prints
2592000 as 2.592e+06, and an integer setting refuses that), others as they are.
*/}}
{{- define "cp.number" -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- end -}}
