{{/* Names: release "hami" gives hami-scheduler, hami-device-plugin, ... as HAMi's chart does. */}}
{{- define "hami.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "hami.fullname" -}}
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

{{- define "hami.scheduler" -}}{{ include "hami.fullname" . | trunc 53 }}-scheduler{{- end -}}
{{- define "hami.scheduler.config" -}}{{ include "hami.scheduler" . }}-config{{- end -}}
{{- define "hami.scheduler.device" -}}{{ include "hami.scheduler" . }}-device{{- end -}}
{{- define "hami.scheduler.tls" -}}{{ include "hami.scheduler" . }}-tls{{- end -}}
{{- define "hami.scheduler.certgen" -}}{{ include "hami.scheduler" . }}-certgen{{- end -}}
{{- define "hami.webhook" -}}{{ include "hami.fullname" . | trunc 55 }}-webhook{{- end -}}
{{- define "hami.devicePlugin" -}}{{ include "hami.fullname" . | trunc 49 }}-device-plugin{{- end -}}
{{- define "hami.monitor" -}}{{ include "hami.fullname" . | trunc 41 }}-device-plugin-monitor{{- end -}}
{{- define "hami.devicePlugin.metrics" -}}{{ include "hami.fullname" . | trunc 41 }}-device-plugin-metrics{{- end -}}
{{- define "hami.dra" -}}{{ include "hami.fullname" . | trunc 52 }}-dra-plugin{{- end -}}
{{- define "hami.dra.metrics" -}}{{ include "hami.fullname" . | trunc 44 }}-dra-plugin-metrics{{- end -}}

{{- define "hami.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "hami.labels" -}}
helm.sh/chart: {{ include "hami.chart" . }}
app.kubernetes.io/name: {{ include "hami.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.global.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include with (dict "root" $ "component" "scheduler"). */}}
{{- define "hami.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hami.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* "annotations:" block or nothing: use {{- with (include "hami.annotations" .) }}{{ . | nindent 2 }}{{ end }} */}}
{{- define "hami.annotations" -}}
{{- with .Values.global.annotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/* The hami-py image (one image, the role is the first argument). */}}
{{- define "hami.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "hami.extender.image" -}}
{{- printf "%s:%s" (default .Values.image.repository .Values.scheduler.extender.image) (default (default .Chart.AppVersion .Values.image.tag) .Values.scheduler.extender.imageTag) -}}
{{- end -}}

{{- define "hami.kubeScheduler.image" -}}
{{- $tag := default (regexReplaceAll "[+].*$" .Capabilities.KubeVersion.Version "") .Values.scheduler.kubeScheduler.imageTag -}}
{{- printf "%s:%s" .Values.scheduler.kubeScheduler.image $tag -}}
{{- end -}}

{{/* Webhook on: the extender serves HTTPS (webhook, filter, bind on one listener) as HAMi does. */}}
{{- define "hami.extender.port" -}}
{{- if .Values.scheduler.admissionWebhook.enabled -}}{{ .Values.scheduler.extender.httpsPort }}{{- else -}}{{ .Values.scheduler.extender.httpPort }}{{- end -}}
{{- end -}}

{{- define "hami.extender.scheme" -}}
{{- if .Values.scheduler.admissionWebhook.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* Port of --metrics-bind-address (":9395" → 9395). */}}
{{- define "hami.scheduler.metricsPort" -}}
{{- regexFind "[0-9]+$" .Values.scheduler.metricsBindAddress -}}
{{- end -}}

{{- define "hami.scheduler.extenderLease" -}}
{{- default (printf "%s-extender" .Values.schedulerName) .Values.scheduler.leaderElection.extenderLeaseName -}}
{{- end -}}

{{/*
Where kube-scheduler calls /filter and /bind. With leaderElection.mode "own" each replica elects
its kube-scheduler and its extender on separate Leases, so the leading kube-scheduler may sit
beside a follower extender: with several replicas it goes through the Service, whose only ready
endpoint is the leading extender (followers answer /readyz with 503). With
"follow-kube-scheduler", or one replica: the extender beside it (it leads with its kube-scheduler).
*/}}
{{- define "hami.extender.urlPrefix" -}}
{{- if .Values.scheduler.extender.urlPrefix -}}
{{- .Values.scheduler.extender.urlPrefix -}}
{{- else if and .Values.scheduler.leaderElect (gt (int .Values.scheduler.replicas) 1) (ne .Values.scheduler.leaderElection.mode "follow-kube-scheduler") -}}
{{- printf "%s://%s.%s.svc:%v" (include "hami.extender.scheme" .) (include "hami.scheduler" .) .Release.Namespace .Values.scheduler.service.httpPort -}}
{{- else -}}
{{- printf "%s://127.0.0.1:%s" (include "hami.extender.scheme" .) (include "hami.extender.port" .) -}}
{{- end -}}
{{- end -}}

{{/* Every resource name the extender manages (kube-scheduler's NodeResourcesFit ignores them):
NVIDIA's, the enabled vendors' (devices.<vendor>.customresources), then the extra ones. */}}
{{- define "hami.managedResources" -}}
{{- $names := list .Values.resourceName .Values.resourceMem .Values.resourceMemPercentage .Values.resourceCores .Values.resourcePriority -}}
{{- range $vendor := list "cambricon" "hygon" "iluvatar" "ascend" "metax" "mthreads" "enflame" "kunlun" "awsneuron" "amd" -}}
{{- $cfg := get $.Values.devices $vendor -}}
{{- if and $cfg $cfg.enabled -}}
{{- $names = concat $names $cfg.customresources -}}
{{- end -}}
{{- end -}}
{{- range concat $names .Values.scheduler.extender.extraManagedResources | uniq }}
- name: {{ . | quote }}
  ignoredByScheduler: true
{{- end }}
{{- end -}}

{{/* --node-label-selector=k=v,k2=v2 (HAMi's map flag), sorted for stable output. */}}
{{- define "hami.nodeLabelSelector" -}}
{{- $items := list -}}
{{- range $k, $v := .Values.scheduler.nodeLabelSelector -}}
{{- $items = append $items (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $items -}}
{{- end -}}

{{- define "hami.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Whether the extender has a serving certificate from the chart (jobs or cert-manager). */}}
{{- define "hami.tls.managed" -}}
{{- if or .Values.scheduler.certManager.enabled .Values.scheduler.patch.enabled -}}true{{- end -}}
{{- end -}}

{{/* The init step shared by the device-plugin and DRA DaemonSets: install HAMi-core on the host.
Files are replaced by rename, never rewritten in place: running containers bind-mount
libvgpu.so, and truncating a mapped library would crash them. */}}
{{- define "hami.installLibvgpu" -}}
- name: install-hami-core
  image: {{ include "hami.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      set -eu
      src=/k8s-vgpu/lib/nvidia
      dst={{ .Values.devicePlugin.libPath }}
      mkdir -p "$dst"
      for f in "$src"/*; do
        name=$(basename "$f")
        if [ -f "$dst/$name" ] && cmp -s "$f" "$dst/$name"; then continue; fi
        cp "$f" "$dst/.$name.tmp"
        chmod 0644 "$dst/.$name.tmp"
        mv -f "$dst/.$name.tmp" "$dst/$name"
        echo "installed $dst/$name"
      done
      mkdir -p {{ .Values.devicePlugin.monitor.ctrPath }}
      chown {{ .Values.devicePlugin.monitor.runAsUser }} {{ .Values.devicePlugin.monitor.ctrPath }}
      chmod 0755 {{ .Values.devicePlugin.monitor.ctrPath }}
  securityContext:
    runAsUser: 0
    runAsNonRoot: false
    allowPrivilegeEscalation: false
    capabilities:
      drop: ["ALL"]
      add: ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
  volumeMounts:
    - name: lib
      mountPath: {{ .Values.devicePlugin.libPath }}
    - name: containers
      mountPath: {{ .Values.devicePlugin.monitor.ctrPath }}
{{- end -}}
