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
app.kubernetes.io/component: gateway
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
{{- /* SIGTERM comes after the preStop sleep; the gateway then drains (drainSeconds), closes its sockets with 1012
  and waits up to 2 s for the close frames to flush; a socket whose client does not answer is aborted only
  limits.close_timeout_s after its closing began. All of it must fit before the kubelet's SIGKILL. */ -}}
{{- $drain := int (ceil .drain) -}}
{{- $close := add (int (ceil .Values.gateway.closeTimeoutSeconds)) 2 -}}
{{- $grace := int .Values.terminationGracePeriodSeconds -}}
{{- $pre := int (default 0 .Values.preStopSleepSeconds) -}}
{{- if le $grace (add $drain $pre $close) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds (%d s) plus the drain (%d s) plus gateway.closeTimeoutSeconds and 2 s of flush (%d s)" $grace $pre $drain $close) -}}
{{- end -}}
{{- if and .Values.redis.sentinels (not .Values.redis.master) -}}
{{- fail "redis.master is required with redis.sentinels" -}}
{{- end -}}
{{- if .Values.ingress.enabled -}}
{{- range .Values.ingress.hosts -}}
{{- range .paths -}}
{{- $path := trimSuffix "/" .path -}}
{{- if or (and (not $path) (ne .pathType "Exact")) (has $path (list "/metrics" "/healthz" "/readyz")) -}}
{{- fail (printf "ingress path %s (%s) would expose /metrics, /healthz or /readyz publicly: route only /v1/ws, /v1/tasks, / (Exact) and /static" .path .pathType) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.ingressFrom (not .Values.networkPolicy.metricsFrom) -}}
{{- fail "networkPolicy.ingressFrom restricts the gateway port, which also serves /metrics: set networkPolicy.metricsFrom to the peers that scrape it (e.g. the monitoring namespace), or Prometheus is shut out" -}}
{{- end -}}
{{- $auth := .Values.auth -}}
{{- if and (ne $auth.mode "none") (not $auth.existingSecret) -}}
{{- fail (printf "auth.mode %s needs auth.existingSecret (the Secret holding its keys file, JWKS or secret)" $auth.mode) -}}
{{- end -}}
{{- if and (eq $auth.mode "api_key") (not $auth.apiKeysKey) -}}
{{- fail "auth.mode api_key needs auth.apiKeysKey" -}}
{{- end -}}
{{- if and (eq $auth.mode "jwt") (eq (empty $auth.jwt.secretKey) (empty $auth.jwt.jwksKey)) -}}
{{- fail "auth.mode jwt needs exactly one of auth.jwt.secretKey and auth.jwt.jwksKey" -}}
{{- end -}}
{{- end -}}

{{/* Client authentication env vars (RTAI_GW_AUTH__*); files come from the Secret mounted at auth.mountPath. */}}
{{- define "rtai.authEnv" -}}
{{- $a := .Values.auth -}}
- name: RTAI_GW_AUTH__MODE
  value: {{ $a.mode | quote }}
- name: RTAI_GW_AUTH__TIMEOUT_S
  value: {{ $a.timeoutSeconds | quote }}
- name: RTAI_GW_AUTH__ALLOW_QUERY_TOKEN
  value: {{ $a.allowQueryToken | quote }}
{{- if eq $a.mode "api_key" }}
- name: RTAI_GW_AUTH__API_KEYS_FILE
  value: {{ printf "%s/%s" $a.mountPath $a.apiKeysKey | quote }}
{{- else if eq $a.mode "jwt" }}
{{- if $a.jwt.secretKey }}
- name: RTAI_GW_AUTH__JWT__SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $a.existingSecret }}
      key: {{ $a.jwt.secretKey }}
{{- else }}
- name: RTAI_GW_AUTH__JWT__JWKS_FILE
  value: {{ printf "%s/%s" $a.mountPath $a.jwt.jwksKey | quote }}
{{- end }}
{{- with $a.jwt.audience }}
- name: RTAI_GW_AUTH__JWT__AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- with $a.jwt.issuer }}
- name: RTAI_GW_AUTH__JWT__ISSUER
  value: {{ . | quote }}
{{- end }}
- name: RTAI_GW_AUTH__JWT__LEEWAY_S
  value: {{ $a.jwt.leewaySeconds | quote }}
- name: RTAI_GW_AUTH__JWT__SUBJECT_CLAIM
  value: {{ $a.jwt.subjectClaim | quote }}
{{- with $a.jwt.tenantClaim }}
- name: RTAI_GW_AUTH__JWT__TENANT_CLAIM
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Host names the gateway answers besides IP addresses and localhost (DNS rebinding): the Service's names, the
Ingress hosts when the Ingress is on, and gateway.allowedHosts. */}}
{{- define "rtai.allowedHosts" -}}
{{- $svc := include "rtai.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) -}}
{{- if .Values.ingress.enabled -}}
{{- range .Values.ingress.hosts }}{{ $names = append $names .host }}{{ end -}}
{{- end -}}
{{- join "," (concat $names .Values.gateway.allowedHosts | uniq) -}}
{{- end -}}
