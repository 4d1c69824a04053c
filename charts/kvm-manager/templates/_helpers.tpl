{{/*
The chart name, or nameOverride.
*/}}
{{- define "kvm-manager.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's base name: fullnameOverride, else <release>-<chart name> (just <release> when
that already contains the chart name).
*/}}
{{- define "kvm-manager.fullname" -}}
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
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "kvm-manager.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object of the release.
*/}}
{{- define "kvm-manager.labels" -}}
helm.sh/chart: {{ include "kvm-manager.chart" . }}
{{ include "kvm-manager.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of the release, common to all its VMs.
*/}}
{{- define "kvm-manager.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvm-manager.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels of one VM (context: a VM from kvm-manager.collectVms). The component is the
VM's name, so the StatefulSets of one release never select each other's pods.
*/}}
{{- define "kvm-manager.vmSelectorLabels" -}}
{{ include "kvm-manager.selectorLabels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
Labels of one VM's objects (context: a VM).
*/}}
{{- define "kvm-manager.vmLabels" -}}
{{ include "kvm-manager.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end }}

{{/*
The service account of the VM pods.
*/}}
{{- define "kvm-manager.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvm-manager.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image cache claim: the existing one, or the chart's.
*/}}
{{- define "kvm-manager.imageCacheClaim" -}}
{{- .Values.imageCache.existingClaim | default (printf "%s-image-cache" (include "kvm-manager.fullname" .)) }}
{{- end }}

{{/*
storageClassName from a storageClass value: "" leaves the cluster's default, "-" means none.
*/}}
{{- define "kvm-manager.storageClassName" -}}
{{- if eq . "-" }}
storageClassName: ""
{{- else if . }}
storageClassName: {{ . | quote }}
{{- end }}
{{- end }}

{{/*
Every VM of the release, into the dict passed as .out (templates cannot return objects):
  name -> {name, key (in vms; "" for the default VM), root, v, cloudInit}
where v holds the per-VM values (the top level, with the vms entry merged over it) and
cloudInit what kvm-manager.cloudInit worked out. Iterating a dict is sorted by name, so
every template renders the VMs in the same order.
*/}}
{{- define "kvm-manager.collectVms" -}}
{{- $root := .root }}
{{- $out := .out }}
{{- $base := pick $root.Values "replicas" "vm" "disk" "resources" "cloudInit" "vnc" "service" "extraEnv" "extraArgs" "debug" "podAnnotations" "podLabels" "nodeSelector" "tolerations" "affinity" }}
{{- $fullname := include "kvm-manager.fullname" $root }}
{{- $wanted := list }}
{{- if $root.Values.enabled }}
{{- $wanted = append $wanted (list "" $fullname dict) }}
{{- end }}
{{- range $key, $override := $root.Values.vms }}
{{- $override = $override | default dict }}
{{- if (dig "enabled" true $override) }}
{{- $wanted = append $wanted (list $key (printf "%s-%s" $fullname $key) (omit $override "enabled")) }}
{{- end }}
{{- end }}
{{- range $wanted }}
{{- $key := index . 0 }}
{{- /* A pod's controller-revision-hash label is <StatefulSet name>-<10 characters>. */}}
{{- $name := index . 1 | trunc 52 | trimSuffix "-" }}
{{- if hasKey $out $name }}
{{- fail (printf "two VMs are both named %q: use shorter vms keys or fullnameOverride" $name) }}
{{- end }}
{{- $v := mustMergeOverwrite (deepCopy $base) (deepCopy (index . 2)) }}
{{- $vm := dict "name" $name "key" $key "root" $root "v" $v }}
{{- include "kvm-manager.cloudInit" $vm }}
{{- $_ := set $out $name $vm }}
{{- end }}
{{- end }}

{{/*
Where one VM's cloud-init inputs come from (context: a VM), set as the VM's "cloudInit":
  configMapData / secretData: what the chart's own ConfigMap / Secret hold
  configMap / secret: the names to mount ("" when there is none)
  userdataFrom: configMap or secret
  checksum: sha256 of all of it, for the pod annotation
Existing objects win over inline values.
*/}}
{{- define "kvm-manager.cloudInit" -}}
{{- $ci := .v.cloudInit }}
{{- $cmData := dict }}
{{- $secretData := dict }}
{{- if not $ci.existingConfigMap }}
{{- with $ci.metadata }}
{{- $_ := set $cmData "metadata" (toYaml .) }}
{{- end }}
{{- with $ci.networkdata }}
{{- if kindIs "string" . }}
{{- $_ := set $cmData "networkdata" . }}
{{- else if eq $ci.format "configdrive" }}
{{- $_ := set $cmData "networkdata" (toPrettyJson .) }}
{{- else }}
{{- $_ := set $cmData "networkdata" (toYaml .) }}
{{- end }}
{{- end }}
{{- with $ci.vendordata }}
{{- $_ := set $cmData "vendordata" . }}
{{- end }}
{{- end }}
{{- if and $ci.userdata (not $ci.existingSecret) }}
{{- if $ci.userdataSecret }}
{{- $_ := set $secretData "userdata" $ci.userdata }}
{{- else if not $ci.existingConfigMap }}
{{- $_ := set $cmData "userdata" $ci.userdata }}
{{- end }}
{{- end }}
{{- $ownName := printf "%s-cloud-init" .name }}
{{- $configMap := $ci.existingConfigMap | default (ternary $ownName "" (gt (len $cmData) 0)) }}
{{- $secret := $ci.existingSecret | default (ternary $ownName "" (gt (len $secretData) 0)) }}
{{- $result := dict "configMapData" $cmData "secretData" $secretData "configMap" $configMap "secret" $secret "userdataFrom" (ternary "secret" "configMap" (ne $secret "")) }}
{{- $_ := set $result "checksum" (toJson $result | sha256sum) }}
{{- $_ := set . "cloudInit" $result }}
{{- end }}

{{/*
The kvm-manager container's environment (context: a VM).
*/}}
{{- define "kvm-manager.env" -}}
{{- $vm := .v.vm }}
{{- $image := $vm.image -}}
- name: IMAGE_DIR
  value: /image
- name: VM_DIR
  value: /vm
- name: RUN_DIR
  value: /run/kvmmgr
- name: IMG_SOURCE
  {{- $where := ternary "" (printf "; set vms.%s.vm.image.source or vm.image.source" .key) (eq .key "") }}
  value: {{ required (printf "vm.image.source is required for VM %s: the URL or path of its base disk image (IMG_SOURCE)%s" .name $where) $image.source | quote }}
{{- with $image.target }}
- name: IMG_TARGET
  value: {{ . | quote }}
{{- end }}
{{- with $image.sha256 }}
- name: IMG_SHA256
  value: {{ . | quote }}
{{- end }}
{{- if not (kindIs "invalid" $image.retries) }}
- name: IMG_RETRIES
  value: {{ $image.retries | quote }}
{{- end }}
{{- if $image.caBundle.configMap }}
- name: IMG_CA_BUNDLE
  value: /etc/kvm-manager/ca/{{ $image.caBundle.key }}
{{- end }}
- name: VM_ACCEL
  value: {{ $vm.accel | default "auto" | quote }}
{{- with $vm.memory }}
- name: VM_MEMORY
  value: {{ . | quote }}
{{- end }}
{{- with $vm.cpus }}
- name: VM_CPUS
  value: {{ . | quote }}
{{- end }}
{{- with $vm.diskSize }}
- name: VM_DISK_SIZE
  value: {{ . | quote }}
{{- end }}
{{- with $vm.mac }}
- name: VM_MAC
  value: {{ . | quote }}
{{- end }}
{{- with $vm.ip }}
- name: VM_IP
  value: {{ . | quote }}
{{- end }}
{{- with $vm.gateway }}
- name: VM_GW
  value: {{ . | quote }}
{{- end }}
{{- with $vm.natExclude }}
- name: NAT_EXCLUDE
  value: {{ join " " . | quote }}
{{- end }}
{{- if ne ($vm.netMode | default "nat") "nat" }}
- name: NET_MODE
  value: {{ $vm.netMode | quote }}
{{- end }}
{{- with $vm.attachIfaces }}
- name: ATTACH_IFACES
  value: {{ join " " . | quote }}
{{- end }}
{{- with $vm.selectedNetwork }}
- name: SELECTED_NETWORK
  value: {{ . | quote }}
{{- end }}
{{- with $vm.ip6 }}
- name: VM_IP6
  value: {{ . | quote }}
{{- end }}
{{- if not $vm.dhcp }}
- name: NO_DHCP
  value: "true"
{{- end }}
{{- with $vm.dnsmasqOpts }}
- name: DNSMASQ_OPTS
  value: {{ . | quote }}
{{- end }}
{{- if ne ($vm.readiness | default "qemu") "qemu" }}
- name: READINESS
  value: {{ $vm.readiness | quote }}
{{- end }}
- name: CONFIG_DRIVE_FORMAT
  value: {{ .v.cloudInit.format | quote }}
{{- range list "userdata" "metadata" "networkdata" "vendordata" }}
- name: {{ upper . }}_PATH
  value: /cloud-init/{{ . }}
{{- end }}
{{- if not .v.vnc.enabled }}
- name: NO_VNC
  value: "true"
{{- else if or .v.vnc.passwordSecret.name .v.vnc.password }}
- name: VNC_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- if .v.vnc.passwordSecret.name }}
      name: {{ .v.vnc.passwordSecret.name }}
      key: {{ required "vnc.passwordSecret.key is required with vnc.passwordSecret.name" .v.vnc.passwordSecret.key }}
      {{- else }}
      name: {{ .name }}-vnc
      key: password
      {{- end }}
{{- end }}
{{- if .v.debug }}
- name: DEBUG
  value: "true"
{{- end }}
{{- with .v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The Service ports of one VM (context: a VM), as YAML {ports: [...]}: service.ports, then VNC.
*/}}
{{- define "kvm-manager.servicePorts" -}}
{{- $ports := list }}
{{- range .v.service.ports }}
{{- $port := dict "name" .name "port" .port "targetPort" (.targetPort | default .port) "protocol" (.protocol | default "TCP") }}
{{- with .nodePort }}
{{- $_ := set $port "nodePort" . }}
{{- end }}
{{- $ports = append $ports $port }}
{{- end }}
{{- if and .v.service.vnc .v.vnc.enabled }}
{{- $ports = append $ports (dict "name" "vnc" "port" 5900 "targetPort" 5900 "protocol" "TCP") }}
{{- end }}
{{- toYaml (dict "ports" $ports) }}
{{- end }}


{{/*
"true" when a VM has a NIC in macvtap mode (context: a VM): each attached interface's mode is
its ":mode", else netMode; no attachIfaces means eth0 in netMode.
*/}}
{{- define "kvm-manager.usesMacvtap" -}}
{{- $mode := .v.vm.netMode | default "nat" }}
{{- $found := false }}
{{- range (.v.vm.attachIfaces | default (list "eth0")) }}
{{- if eq (ternary (splitList ":" . | last) $mode (contains ":" .)) "macvtap" }}
{{- $found = true }}
{{- end }}
{{- end }}
{{- if $found }}true{{ end }}
{{- end }}
