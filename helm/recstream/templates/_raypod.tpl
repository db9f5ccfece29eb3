{{/*
A Ray pod template (head or worker group). Args: root, group (head | cpu-workers | gpu-workers),
v (the group's values), gpu (bool). Ray writes its session files to /tmp and its object store to
/dev/shm, both emptyDirs under the read-only root filesystem.
*/}}
{{- define "recstream.rayPod" -}}
{{- $root := .root -}}
{{- $v := .v -}}
{{- $head := eq .group "head" -}}
{{- $objectStore := eq $root.Values.artifacts.source "objectStore" -}}
{{- $resources := deepCopy $v.resources -}}
{{- if .gpu -}}
{{- $gpus := dict "nvidia.com/gpu" (int $root.Values.gpu.gpusPerPod) -}}
{{- $_ := set $resources "limits" (merge (default dict $resources.limits) $gpus) -}}
{{- $_ := set $resources "requests" (merge (default dict $resources.requests) $gpus) -}}
{{- end -}}
metadata:
  labels:
    {{- include "recstream.selectorLabels" (dict "root" $root "component" (printf "ray-%s" .group)) | nindent 4 }}
    recstream.io/role: ray
    {{- with $root.Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/settings: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $root.Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "recstream.serviceAccountName" $root }}
  # Only the head's autoscaler sidecar (serve.autoscaling) talks to the Kubernetes API.
  automountServiceAccountToken: {{ and $head $root.Values.serve.autoscaling }}
  securityContext:
    {{- include "recstream.podSecurityContext" $root | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $objectStore }}
  initContainers:
    {{- include "recstream.artifactsSync" (dict "root" $root "mode" "init") | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" $head }}
      image: {{ ternary (include "recstream.cudaImage" $root) (include "recstream.image" $root) .gpu }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      ports:
        {{- if $head }}
        - {name: gcs-server, containerPort: 6379, protocol: TCP}
        - {name: dashboard, containerPort: 8265, protocol: TCP}
        - {name: client, containerPort: 10001, protocol: TCP}
        {{- end }}
        - {name: serve, containerPort: {{ $root.Values.serve.port }}, protocol: TCP}
        - {name: metrics, containerPort: 8080, protocol: TCP}
      envFrom:
        {{- include "recstream.envFrom" $root | nindent 8 }}
      env:
        {{- include "recstream.env" $root | nindent 8 }}
      resources:
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- include "recstream.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        {{- include "recstream.workMounts" $root | nindent 8 }}
        {{- include "recstream.artifactsMount" $root | nindent 8 }}
        - name: dshm
          mountPath: /dev/shm
    {{- if $objectStore }}
    {{- include "recstream.artifactsSync" (dict "root" $root "mode" "sync") | nindent 4 }}
    {{- end }}
  volumes:
    {{- include "recstream.workVolumes" $root | nindent 4 }}
    {{- include "recstream.artifactsVolume" $root | nindent 4 }}
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.shmSizeLimit }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
