{{/*
Expand the name of the chart.
*/}}
{{- define "image-preloader.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "image-preloader.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "image-preloader.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels (every object). commonLabels are added; they never replace the standard ones.
*/}}
{{- define "image-preloader.labels" -}}
{{- $labels := fromYaml (include "image-preloader.selectorLabels" .) }}
{{- $_ := set $labels "helm.sh/chart" (include "image-preloader.chart" .) }}
{{- $_ = set $labels "app.kubernetes.io/version" .Chart.AppVersion }}
{{- $_ = set $labels "app.kubernetes.io/managed-by" .Release.Service }}
{{- $_ = set $labels "app.kubernetes.io/part-of" "image-preloader" }}
{{- toYaml (merge $labels (.Values.commonLabels | default dict)) }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "image-preloader.selectorLabels" -}}
app.kubernetes.io/name: {{ include "image-preloader.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "image-preloader.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "image-preloader.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The DaemonSets to render, as YAML `{sets: [...]}`: the top-level `images` (pool "default", named
fullname) when not empty, then one per entry of `pools`, whose nodeSelector, tolerations, affinity,
resources and registryAuth replace the global ones when the pool sets them.
*/}}
{{- define "image-preloader.daemonSets" -}}
{{- $fullname := include "image-preloader.fullname" . }}
{{- $keys := list "nodeSelector" "tolerations" "affinity" "resources" "registryAuth" }}
{{- $sets := list }}
{{- if .Values.images }}
{{- $set := dict "name" $fullname "pool" "default" "images" .Values.images }}
{{- range $keys }}
{{- $_ := set $set . (index $.Values .) }}
{{- end }}
{{- $sets = append $sets $set }}
{{- end }}
{{- $seen := dict }}
{{- range $pool := .Values.pools }}
{{- if hasKey $seen $pool.name }}
{{- fail (printf "pools: the name %q is used twice" $pool.name) }}
{{- end }}
{{- if eq $pool.name "default" }}
{{- fail "pools: the name \"default\" is reserved for the top-level images" }}
{{- end }}
{{- $_ := set $seen $pool.name true }}
{{- $set := dict "name" (printf "%s-%s" $fullname $pool.name | trunc 63 | trimSuffix "-") "pool" $pool.name "images" $pool.images }}
{{- range $keys }}
{{- $_ := set $set . (ternary (index $pool .) (index $.Values .) (hasKey $pool .)) }}
{{- end }}
{{- $sets = append $sets $set }}
{{- end }}
{{- toYaml (dict "sets" $sets) }}
{{- end }}

{{/*
Labels of one DaemonSet's objects and pods; argument: dict "ctx" (root) "set" (a daemonSets entry).
*/}}
{{- define "image-preloader.setLabels" -}}
{{- $labels := fromYaml (include "image-preloader.labels" .ctx) }}
{{- $labels = merge (fromYaml (include "image-preloader.setSelectorLabels" .)) $labels }}
{{- $_ := set $labels "app.kubernetes.io/component" "preloader" }}
{{- toYaml $labels }}
{{- end }}

{{/*
Selector labels of one DaemonSet: the standard ones plus the pool, so DaemonSets never select each
other's pods.
*/}}
{{- define "image-preloader.setSelectorLabels" -}}
{{ include "image-preloader.selectorLabels" .ctx }}
image-preloader.io/pool: {{ .set.pool | quote }}
{{- end }}

{{/*
A number or a string as a command-line argument (Helm may hand numbers over as floats).
*/}}
{{- define "image-preloader.arg" -}}
{{- if kindIs "string" . }}{{ . }}{{ else if kindIs "bool" . }}{{ . }}{{ else }}{{ int64 . }}{{ end }}
{{- end }}

{{/*
Where the image list file is mounted in the preloader container.
*/}}
{{- define "image-preloader.configDir" -}}/etc/image-preloader{{- end }}

{{/*
The daemon socket address, shared by dind and the preloader through the dind-sock emptyDir.
*/}}
{{- define "image-preloader.dockerHost" -}}unix:///var/run/docker.sock{{- end }}

{{/*
The preloader's arguments (the image's ENTRYPOINT is the binary): `image-preloader run …`.
*/}}
{{- define "image-preloader.args" -}}
- run
- --images-file
- {{ printf "%s/images.txt" (include "image-preloader.configDir" .) | quote }}
- --dir
- {{ .Values.hostPath | quote }}
- --max-image-age
- {{ include "image-preloader.arg" .Values.maxImageAge | quote }}
- --interval
- {{ include "image-preloader.arg" .Values.checkInterval | quote }}
- --concurrency
- {{ include "image-preloader.arg" .Values.concurrency | quote }}
- --log-format
- {{ .Values.logFormat | quote }}
- --refresh-policy
- {{ .Values.refreshPolicy | quote }}
- --min-free
- {{ include "image-preloader.arg" .Values.minFree | quote }}
{{- if .Values.prune }}
- --prune
{{- end }}
{{- if .Values.removeAfterSave }}
- --remove-after-save
{{- end }}
{{- if eq .Values.mode "registry" }}
- --mode
- "registry"
- --layers
- {{ .Values.registry.layers | default "uncompressed" | quote }}
{{- range .Values.registry.mirrors }}
- --registry-mirror
- {{ . | quote }}
{{- end }}
{{- range .Values.registry.insecureRegistries }}
- --insecure-registry
- {{ . | quote }}
{{- end }}
{{- else }}
- --docker-host
- {{ include "image-preloader.dockerHost" . | quote }}
- --listen
- {{ printf "0.0.0.0:%d" (int .Values.metrics.port) | quote }}
{{- end }}
{{- end }}

{{/*
One `images` entry as a line of images.txt: a reference, or `{image, platform}` as
`REF platform=OS/ARCH[/VARIANT]`.
*/}}
{{- define "image-preloader.entry" -}}
{{- if kindIs "map" . }}{{ .image }}{{ with .platform }} platform={{ . }}{{ end }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/*
Where the registryAuth Secret's config file is mounted in the preloader container.
*/}}
{{- define "image-preloader.registryAuthDir" -}}/etc/image-preloader-registry-auth{{- end }}

{{/*
The arguments one DaemonSet adds to the shared ones; argument: a daemonSets entry.
*/}}
{{- define "image-preloader.setArgs" -}}
{{- if (.registryAuth | default dict).existingSecret }}
- --docker-config
- {{ printf "%s/config.json" (include "image-preloader.registryAuthDir" .) | quote }}
{{- end }}
{{- end }}

{{/*
The dind daemon's arguments (the dind image's entrypoint starts dockerd from them).
*/}}
{{- define "image-preloader.dockerdArgs" -}}
- dockerd
- {{ printf "--host=%s" (include "image-preloader.dockerHost" .) | quote }}
- {{ printf "--mtu=%s" (include "image-preloader.arg" .Values.dockerd.mtu) | quote }}
- {{ printf "--group=%s" (include "image-preloader.arg" .Values.dockerd.groupGid) | quote }}
{{- with .Values.dockerd.maxConcurrentDownloads }}
- {{ printf "--max-concurrent-downloads=%s" (include "image-preloader.arg" .) | quote }}
{{- end }}
{{- range .Values.dockerd.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
The ConfigMap of one DaemonSet; argument: dict "ctx" (root) "set".
*/}}
{{- define "image-preloader.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .set.name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "image-preloader.setLabels" . | nindent 4 }}
data:
  images.txt: |
    # Images archived by the DaemonSet {{ .set.name }}, one per line: REF [platform=OS/ARCH[/VARIANT]].
    {{- range .set.images }}
    {{ include "image-preloader.entry" . }}
    {{- end }}
{{- end }}

{{/*
The preloader image reference.
*/}}
{{- define "image-preloader.preloaderImage" -}}
{{- printf "%s:%s" .Values.preloader.image.repository (default .Chart.AppVersion .Values.preloader.image.tag) }}
{{- end }}

{{/*
imagePullSecrets as LocalObjectReferences (names or {name: …} objects are accepted).
*/}}
{{- define "image-preloader.imagePullSecrets" -}}
{{- range .Values.imagePullSecrets }}
{{- if kindIs "string" . }}
- name: {{ . | quote }}
{{- else }}
- name: {{ .name | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The DaemonSet update strategy: a string is the strategy type, an object is used as is.
*/}}
{{- define "image-preloader.updateStrategy" -}}
{{- if kindIs "string" .Values.updateStrategy }}
type: {{ .Values.updateStrategy }}
{{- else }}
{{- toYaml .Values.updateStrategy }}
{{- end }}
{{- end }}
