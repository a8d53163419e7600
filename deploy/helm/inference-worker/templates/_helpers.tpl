{{/* Name helpers (the usual Helm conventions). */}}
{{- define "rtai.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "rtai.fullname" -}}
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

{{- define "rtai.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rtai.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "rtai.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "rtai.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: rtai
app.kubernetes.io/component: inference-worker
{{- end -}}

{{- define "rtai.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "rtai.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "rtai.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Redis env vars shared by the services: $prefix is RTAI_GW_ or RTAI_WORKER_. */}}
{{- define "rtai.redisEnv" -}}
{{- $p := .prefix -}}
{{- $r := .redis -}}
{{- if $r.sentinels }}
- name: {{ $p }}REDIS__SENTINELS
  value: {{ join "," $r.sentinels | quote }}
- name: {{ $p }}REDIS__MASTER
  value: {{ $r.master | quote }}
{{- else }}
- name: {{ $p }}REDIS__URL
  value: {{ $r.url | quote }}
{{- end }}
- name: {{ $p }}REDIS__PREFIX
  value: {{ $r.prefix | quote }}
- name: {{ $p }}REDIS__TLS
  value: {{ $r.tls | quote }}
{{- with $r.username }}
- name: {{ $p }}REDIS__USERNAME
  value: {{ . | quote }}
{{- end }}
{{- with $r.auth.existingSecret }}
- name: {{ $p }}REDIS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $r.auth.passwordKey }}
{{- if and $r.sentinels $r.auth.sentinelPassword }}
- name: {{ $p }}REDIS__SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ . }}
      key: {{ $r.auth.sentinelPasswordKey }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "rtai.topologySpread" -}}
{{- if .Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- range $key := list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: {{ $.Values.topologySpread.maxSkew }}
    topologyKey: {{ $key }}
    whenUnsatisfiable: {{ $.Values.topologySpread.whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "rtai.selectorLabels" $ | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
  {{- end }}
{{- end }}
{{- end -}}

{{/* Checks that make a bad combination fail at render time instead of in the cluster. */}}
{{- define "rtai.validate" -}}
{{- $drain := int .drain -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $pre := int (default 0 .Values.preStopSleepSeconds) -}}
{{- if le $grace (add $drain $pre) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed the drain time (%d s) plus preStopSleepSeconds (%d s)" $grace $drain $pre) -}}
{{- end -}}
{{- if and .Values.redis.sentinels (not .Values.redis.master) -}}
{{- fail "redis.master is required with redis.sentinels" -}}
{{- end -}}
{{- $served := list -}}
{{- range splitList "," .Values.worker.tasks -}}
{{- $served = append $served (trim (first (splitList "=" .))) -}}
{{- end -}}
{{- range splitList "," .Values.worker.retiredTasks -}}
{{- if has (trim .) $served -}}
{{- fail (printf "worker.retiredTasks names %s, which worker.tasks still serves: the hook Job would remove a live task from the registry (drop it from one of the two)" (trim .)) -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.autoscaling.mode "hpa") (lt (int .Values.autoscaling.minReplicas) 1) -}}
{{- fail "autoscaling.minReplicas 0 (scale to zero) needs autoscaling.mode keda: an HPA on CPU cannot start the first worker" -}}
{{- end -}}
{{- end -}}
