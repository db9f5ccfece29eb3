{{/* Names and labels. */}}
{{- define "recstream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "recstream.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Selector labels: name + instance (+ component, given as .component). */}}
{{- define "recstream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recstream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{- define "recstream.labels" -}}
{{ include "recstream.selectorLabels" . }}
app.kubernetes.io/part-of: recstream
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "recstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "recstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "recstream.image" -}}
{{- $sep := ternary "@" ":" (hasPrefix "sha256:" .Values.image.tag) -}}
{{- printf "%s%s%s" .Values.image.repository $sep .Values.image.tag -}}
{{- end -}}

{{- define "recstream.cudaImage" -}}
{{- $sep := ternary "@" ":" (hasPrefix "sha256:" .Values.image.cudaTag) -}}
{{- printf "%s%s%s" .Values.image.cudaRepository $sep .Values.image.cudaTag -}}
{{- end -}}

{{/* Kafka and Redis endpoints: the in-chart dev instances when enabled, else the external ones. */}}
{{- define "recstream.kafkaBootstrap" -}}
{{- if .Values.kafka.dev.enabled -}}
{{- printf "%s-kafka:9092" (include "recstream.fullname" .) -}}
{{- else -}}
{{- .Values.kafka.bootstrap -}}
{{- end -}}
{{- end -}}

{{- define "recstream.redisSecretName" -}}
{{- if .Values.redis.existingSecret -}}
{{- .Values.redis.existingSecret -}}
{{- else -}}
{{- printf "%s-redis" (include "recstream.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "recstream.redisUrl" -}}
{{- if .Values.redis.dev.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "recstream.fullname" .) -}}
{{- else -}}
{{- .Values.redis.url -}}
{{- end -}}
{{- end -}}

{{- define "recstream.objectStoreSecretName" -}}
{{- default (printf "%s-object-store" (include "recstream.fullname" .)) .Values.artifacts.objectStore.existingSecret -}}
{{- end -}}

{{/*
The BSE's ranker version: bse.modelVersion, or the ranker version of the variant with the largest
share (ties: the first name in sort order). Returns "name/version".
*/}}
{{- define "recstream.bseRanker" -}}
{{- $best := "" -}}{{- $share := -1.0 -}}
{{- range $name := keys .Values.serve.config.variants | sortAlpha -}}
{{- $v := index $.Values.serve.config.variants $name -}}
{{- if gt (float64 $v.share) $share -}}{{- $best = $name -}}{{- $share = float64 $v.share -}}{{- end -}}
{{- end -}}
{{- $ranker := dict "name" "ranker" "version" "latest" -}}
{{- with (index .Values.serve.config.variants $best).ranker -}}{{- $ranker = merge (deepCopy .) $ranker -}}{{- end -}}
{{- $version := default $ranker.version .Values.bse.modelVersion -}}
{{- if eq $version "latest" -}}
{{- fail (printf "bse.modelVersion: the BSE keeps SDIM tables for one pinned ranker version, and variant %s's ranker version is 'latest'; pin serve.config.variants.%s.ranker.version or set bse.modelVersion" $best $best) -}}
{{- end -}}
{{- printf "%s/%s" $ranker.name $version -}}
{{- end -}}

{{/*
Cross-field checks that values.schema.json cannot express; each message carries the values
(as services/config.py ServeConfig words them, for the same rules).
*/}}
{{- define "recstream.validate" -}}
{{- $c := .Values.serve.config -}}
{{- $sum := 0.0 -}}
{{- range $name, $v := $c.variants }}{{- $sum = addf $sum (float64 $v.share) -}}{{- end -}}
{{- if or (gt $sum 1.000001) (lt $sum 0.999999) -}}
{{- fail (printf "serve.config.variants: shares must sum to 1, got %v" $sum) -}}
{{- end -}}
{{- $cand := int (default 1000 $c.candidate_top_k) -}}{{- $coarse := int (default 200 $c.coarse_top_k) -}}{{- $maxk := int (default 200 $c.max_k) -}}
{{- if gt $coarse $cand -}}
{{- fail (printf "serve.config.coarse_top_k (%d) must be <= candidate_top_k (%d)" $coarse $cand) -}}
{{- end -}}
{{- if gt $maxk $coarse -}}
{{- fail (printf "serve.config.max_k (%d) must be <= coarse_top_k (%d)" $maxk $coarse) -}}
{{- end -}}
{{- $parts := int .Values.kafka.topics.partitions -}}
{{- range $key := list "popularity" "featureWriter" "bseEncoder" -}}
{{- $p := index $.Values.processors $key -}}
{{- if and $p.enabled (gt (int $p.replicas) $parts) -}}
{{- fail (printf "processors.%s.replicas (%d) must be <= kafka.topics.partitions (%d): a consumer group has at most one member per partition" $key (int $p.replicas) $parts) -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.kafka.dev.enabled) (not .Values.kafka.bootstrap) -}}
{{- fail "kafka.bootstrap: set your brokers (host:port[,host:port]) or kafka.dev.enabled=true" -}}
{{- end -}}
{{- if and (not .Values.redis.dev.enabled) (not .Values.redis.existingSecret) (not .Values.redis.url) (not .Values.redis.cluster.nodes) -}}
{{- fail "redis.url: set your Redis URL, redis.cluster.nodes, redis.existingSecret, or redis.dev.enabled=true" -}}
{{- end -}}
{{- if and .Values.redis.dev.enabled .Values.redis.cluster.nodes -}}
{{- fail (printf "redis.cluster.nodes (%s) and redis.dev.enabled: the dev Redis is a single node, not a cluster; use one or the other" (join "," .Values.redis.cluster.nodes)) -}}
{{- end -}}
{{- $rep := .Values.kafka.replication -}}
{{- if and (not (kindIs "invalid" $rep.factor)) (not (kindIs "invalid" $rep.minInsyncReplicas)) -}}
{{- if gt (int $rep.minInsyncReplicas) (int $rep.factor) -}}
{{- fail (printf "kafka.replication.minInsyncReplicas (%d) must be <= kafka.replication.factor (%d): no acks=all write could succeed" (int $rep.minInsyncReplicas) (int $rep.factor)) -}}
{{- end -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $rep.minInsyncReplicas)) (gt (int $rep.minInsyncReplicas) 1) (ne (toString $rep.acks) "all") -}}
{{- fail (printf "kafka.replication.minInsyncReplicas (%d) is ignored with kafka.replication.acks=%s: set acks to all" (int $rep.minInsyncReplicas) (toString $rep.acks)) -}}
{{- end -}}
{{- if and .Values.kafka.dev.enabled (not (kindIs "invalid" $rep.factor)) (gt (int $rep.factor) 1) -}}
{{- fail (printf "kafka.replication.factor (%d) with kafka.dev.enabled: the dev broker is a single node; leave the factor null or use external brokers" (int $rep.factor)) -}}
{{- end -}}
{{- if and (eq .Values.artifacts.source "objectStore") (not .Values.artifacts.objectStore.url) -}}
{{- fail "artifacts.objectStore.url: artifacts.source is objectStore; name the store (s3://bucket/prefix)" -}}
{{- end -}}
{{- if .Values.gpu.enabled -}}
{{- if gt (float64 .Values.gpu.ranker.numGpus) (float64 .Values.gpu.gpusPerPod) -}}
{{- fail (printf "gpu.ranker.numGpus (%v) must be <= gpu.gpusPerPod (%v)" .Values.gpu.ranker.numGpus .Values.gpu.gpusPerPod) -}}
{{- end -}}
{{- if not $c.ranker_deployment -}}
{{- fail "gpu.enabled needs serve.config.ranker_deployment=true: the GPU group runs the ranker deployment" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level security context. */}}
{{- define "recstream.podSecurityContext" -}}
{{ toYaml .Values.podSecurityContext }}
{{- end -}}

{{- define "recstream.containerSecurityContext" -}}
{{ toYaml .Values.containerSecurityContext }}
{{- end -}}

{{/* RECSTREAM_* environment of every recstream container. */}}
{{- define "recstream.env" -}}
- name: RECSTREAM_REDIS_URL
{{- with .Values.redis.cluster.nodes }}
  value: {{ printf "redis+cluster://%s" (join "," .) | quote }}
{{- else }}
  valueFrom:
    secretKeyRef:
      name: {{ include "recstream.redisSecretName" . }}
      key: {{ ternary .Values.redis.existingSecretKey "redis-url" (ne .Values.redis.existingSecret "") }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "recstream.envFrom" -}}
- configMapRef:
    name: {{ include "recstream.fullname" . }}-settings
{{- end -}}

{{/* Writable folders under a read-only root filesystem: /tmp and RECSTREAM_HOME. */}}
{{- define "recstream.workVolumes" -}}
- name: tmp
  emptyDir: {}
- name: home
{{- if .Values.feast.claimName }}
  persistentVolumeClaim:
    claimName: {{ .Values.feast.claimName }}
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{- define "recstream.workMounts" -}}
- name: tmp
  mountPath: /tmp
- name: home
  mountPath: /var/lib/recstream
{{- end -}}

{{/* The artefacts volume (RECSTREAM_ARTIFACTS_DIR=/artifacts). */}}
{{- define "recstream.artifactsVolume" -}}
- name: artifacts
{{- if and (eq .Values.artifacts.source "volume") .Values.artifacts.volume.claimName }}
  persistentVolumeClaim:
    claimName: {{ .Values.artifacts.volume.claimName }}
    readOnly: true
{{- else }}
  emptyDir: {}
{{- end }}
{{- end -}}

{{- define "recstream.artifactsMount" -}}
- name: artifacts
  mountPath: /artifacts
  readOnly: true
{{- if and (eq .Values.artifacts.source "volume") .Values.artifacts.volume.subPath }}
  subPath: {{ .Values.artifacts.volume.subPath }}
{{- end }}
{{- end -}}

{{/* rclone from the object store into the artefacts emptyDir: "init" (once) or "sidecar" (loop). */}}
{{- define "recstream.artifactsSync" -}}
{{- $o := .root.Values.artifacts.objectStore -}}
{{- $remote := printf ":s3:%s/models" (trimPrefix "s3://" $o.url | trimSuffix "/") -}}
{{- $copy := printf "rclone copy --config /dev/null --checksum %s /artifacts/models" $remote -}}
- name: artifacts-{{ .mode }}
  image: {{ $o.image }}
  imagePullPolicy: IfNotPresent
{{- if eq .mode "init" }}
  command: ["sh", "-c", {{ $copy | quote }}]
{{- else }}
  command: ["sh", "-c", {{ printf "while true; do sleep %d; %s || echo 'artifacts sync failed; retrying'; done" (int $o.syncIntervalS) $copy | quote }}]
{{- end }}
  env:
    - {name: RCLONE_S3_PROVIDER, value: {{ ternary "Other" "AWS" (ne $o.endpoint "") }}}
    - {name: RCLONE_S3_ENV_AUTH, value: "true"}
{{- with $o.endpoint }}
    - {name: RCLONE_S3_ENDPOINT, value: {{ . | quote }}}
{{- end }}
{{- with $o.region }}
    - {name: RCLONE_S3_REGION, value: {{ . | quote }}}
{{- end }}
    - {name: RCLONE_CACHE_DIR, value: /tmp/rclone}
    - {name: HOME, value: /tmp}
{{- if or $o.existingSecret $o.accessKeyId }}
  envFrom:
    - secretRef:
        name: {{ include "recstream.objectStoreSecretName" .root }}
{{- end }}
  securityContext:
    {{- include "recstream.containerSecurityContext" .root | nindent 4 }}
  resources:
    requests: {cpu: 50m, memory: 64Mi}
    limits: {cpu: 500m, memory: 256Mi}
  volumeMounts:
    - name: artifacts
      mountPath: /artifacts
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/* NetworkPolicy egress rules: to peers (any address when none) on ports; DNS. */}}
{{- define "recstream.np.egress" -}}
{{- /* args: peers, ports */ -}}
- ports:
  {{- range .ports }}
    - {port: {{ . }}, protocol: TCP}
  {{- end }}
  {{- with .peers }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- define "recstream.np.dns" -}}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
  {{- with . }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
