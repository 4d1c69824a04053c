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
{{- $base := pick $root.Values "replicas" "vm" "disk" "resources" "cloudInit" "vnc" "webConsole" "service" "extraEnv" "extraArgs" "debug" "metrics" "podAnnotations" "podLabels" "nodeSelector" "tolerations" "affinity" }}
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
{{- if $vm.diskSize }}
- name: VM_DISK_SIZE
  value: {{ $vm.diskSize | quote }}
{{- else if dig "diskSizeFromVolume" true $vm }}
- name: VM_DISK_SIZE
  value: {{ include "kvm-manager.diskSizeFromVolume" . | quote }}
{{- end }}
{{- with $vm.diskPolicy }}
- name: VM_DISK_POLICY
  value: {{ . | quote }}
{{- end }}
{{- with (include "kvm-manager.dataDisks" . | fromYaml).disks }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items .arg }}
{{- end }}
- name: VM_DATA_DISKS
  value: {{ join " " $items | quote }}
{{- end }}
{{- with $vm.mac }}
- name: VM_MAC
  value: {{ . | quote }}
{{- end }}
{{- include "kvm-manager.checkHardware" . }}
{{- with $vm.machine }}
- name: VM_MACHINE
  value: {{ . | quote }}
{{- end }}
{{- with $vm.firmware }}
- name: VM_FIRMWARE
  value: {{ . | quote }}
{{- end }}
{{- if $vm.secureBoot }}
- name: VM_SECURE_BOOT
  value: "true"
{{- end }}
{{- if $vm.balloon }}
- name: VM_BALLOON
  value: "true"
{{- end }}
{{- with $vm.diskBus }}
- name: VM_DISK_BUS
  value: {{ . | quote }}
{{- end }}
{{- with $vm.nicModel }}
- name: VM_NIC_MODEL
  value: {{ . | quote }}
{{- end }}
{{- with $vm.cpuModel }}
- name: VM_CPU_MODEL
  value: {{ . | quote }}
{{- end }}
{{- with $vm.serial }}
- name: VM_SERIAL
  value: {{ . | quote }}
{{- end }}
{{- with $vm.uuid }}
- name: VM_UUID
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
{{- if .v.metrics.enabled }}
{{- include "kvm-manager.checkMetrics" . }}
- name: METRICS_PORT
  value: {{ int .v.metrics.port | quote }}
{{- end }}
{{- if .v.webConsole.enabled }}
{{- include "kvm-manager.checkWebConsole" . }}
- name: WEB_CONSOLE_PORT
  value: {{ int .v.webConsole.port | quote }}
{{- end }}
{{- with .v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The metrics sidecar's port, checked (context: a VM with metrics.enabled). The VM container keeps
METRICS_PORT for the sidecar instead of forwarding it to the VM, so it cannot be VNC's, nor a
port the Service sends to the VM; and one value sets it everywhere (both containers' env, the
container port, the headless Service, the annotations).
*/}}
{{- define "kvm-manager.checkMetrics" -}}
{{- $port := int .v.metrics.port }}
{{- if eq $port 5900 }}
{{- fail (printf "VM %s: metrics.port 5900 is TCP 5900 of the pod, QEMU's VNC display (or, without VNC, the VM's): choose another, e.g. 9477" .name) }}
{{- end }}
{{- range .v.service.ports }}
{{- if and (eq (int (.targetPort | default .port)) $port) (eq (.protocol | default "TCP") "TCP") }}
{{- fail (printf "VM %s: metrics.port %d is also the target of service port %s, which goes to the VM: the pod keeps TCP %d for the metrics sidecar; choose another metrics.port" $.name $port .name $port) }}
{{- end }}
{{- end }}
{{- range .v.extraEnv }}
{{- if eq .name "METRICS_PORT" }}
{{- fail (printf "VM %s: set metrics.port, not METRICS_PORT in extraEnv: the containers, the container port and the Service port all follow metrics.port" $.name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The web console's port, checked (context: a VM with webConsole.enabled). It shows QEMU's VNC
display, so it needs VNC; and the VM container keeps WEB_CONSOLE_PORT instead of forwarding it
to the VM, as it keeps 5900 and METRICS_PORT, so it can be none of those, nor a port the
Service sends to the VM.
*/}}
{{- define "kvm-manager.checkWebConsole" -}}
{{- $port := int .v.webConsole.port }}
{{- if not .v.vnc.enabled }}
{{- fail (printf "VM %s: webConsole.enabled needs vnc.enabled: the web console shows QEMU's VNC display (kvm-manager refuses WEB_CONSOLE_PORT with NO_VNC); set vnc.enabled to true or webConsole.enabled to false" .name) }}
{{- end }}
{{- if eq $port 5900 }}
{{- fail (printf "VM %s: webConsole.port 5900 is QEMU's VNC display: choose another, e.g. 6080" .name) }}
{{- end }}
{{- if and .v.metrics.enabled (eq (int .v.metrics.port) $port) }}
{{- fail (printf "VM %s: webConsole.port %d is also metrics.port: choose another for one of them" .name $port) }}
{{- end }}
{{- range .v.service.ports }}
{{- if and (eq (int (.targetPort | default .port)) $port) (eq (.protocol | default "TCP") "TCP") }}
{{- fail (printf "VM %s: webConsole.port %d is also the target of service port %s, which goes to the VM: the pod keeps TCP %d for the web console; choose another webConsole.port" $.name $port .name $port) }}
{{- end }}
{{- if eq .name "web-console" }}
{{- fail (printf "VM %s: service port name web-console is the web console's (webConsole.enabled): name it otherwise" $.name) }}
{{- end }}
{{- end }}
{{- range .v.extraEnv }}
{{- if eq .name "WEB_CONSOLE_PORT" }}
{{- fail (printf "VM %s: set webConsole.port, not WEB_CONSOLE_PORT in extraEnv: the container, its port and the Service port all follow webConsole.port" $.name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The combinations of virtual hardware that kvm-manager refuses, refused here first (context: a
VM), so that a bad release fails at `helm install` rather than in a crash-looping pod.
*/}}
{{- define "kvm-manager.checkHardware" -}}
{{- $vm := .v.vm }}
{{- if $vm.secureBoot }}
{{- if eq ($vm.firmware | default "") "bios" }}
{{- fail (printf "VM %s: vm.secureBoot needs UEFI on q35, not vm.firmware \"bios\": set vm.firmware to uefi or leave it empty" .name) }}
{{- end }}
{{- if eq ($vm.machine | default "") "pc" }}
{{- fail (printf "VM %s: vm.secureBoot needs UEFI on q35, not vm.machine \"pc\": set vm.machine to q35 or leave it empty" .name) }}
{{- end }}
{{- end }}
{{- /* An empty machine is pc, or q35 with Secure Boot. */}}
{{- $machine := $vm.machine | default "pc" }}
{{- if and $vm.secureBoot (not $vm.machine) }}
{{- $machine = "q35" }}
{{- end }}
{{- $bus := $vm.diskBus | default "" }}
{{- if and (eq $bus "ide") (eq $machine "q35") }}
{{- $why := ternary "vm.machine is q35" "vm.secureBoot makes the machine q35" (eq ($vm.machine | default "") "q35") }}
{{- fail (printf "VM %s: vm.diskBus \"ide\" is not possible on q35, which has no IDE (%s): use sata, or the pc machine" .name $why) }}
{{- end }}
{{- if and (eq ($vm.cpuModel | default "") "host") (eq ($vm.accel | default "auto") "tcg") }}
{{- fail (printf "VM %s: vm.cpuModel \"host\" needs KVM, not vm.accel \"tcg\": name a model (e.g. qemu64, Westmere) or leave it empty" .name) }}
{{- end }}
{{- /* Room besides the boot disk and the config drive's CD-ROM: of 6 AHCI ports, of 4 IDE units. */}}
{{- $room := dict "sata" 4 "ide" 2 }}
{{- $count := len ($vm.dataDisks | default list) }}
{{- if and (hasKey $room $bus) (gt $count (index $room $bus)) }}
{{- fail (printf "VM %s: vm.dataDisks has %d disks: the %s bus has room for %d besides the boot disk (use scsi or virtio for more)" .name $count $bus (index $room $bus)) }}
{{- end }}
{{- end }}

{{/*
One VM's data disks (context: a VM), as YAML {disks: [...]} in the order of vm.dataDisks, each
with `arg`, its item of VM_DATA_DISKS. A `size` entry is also `size` (the disk kvm-manager
makes on /vm); a `claim` entry also has `claim` (its volumeClaimTemplate) and `device` or
`mount`. The n-th claim entry (n from 1) is the claim data-<n>: in Block mode the device
/dev/kvmmgr-data<n>; in Filesystem mode mounted at /data/<n>, the disk being the file
/data/<n>/disk.img there (the user's to put there).
*/}}
{{- define "kvm-manager.dataDisks" -}}
{{- $disks := list }}
{{- $n := 0 }}
{{- range .v.vm.dataDisks }}
{{- if .claim }}
{{- $n = add1 $n }}
{{- $claim := dict "name" (printf "data-%d" $n) "size" .claim.size "storageClass" (.claim.storageClass | default "") "volumeMode" (.claim.volumeMode | default "Block") "accessModes" (.claim.accessModes | default (list "ReadWriteOnce")) }}
{{- if eq $claim.volumeMode "Block" }}
{{- $device := printf "/dev/kvmmgr-data%d" $n }}
{{- $disks = append $disks (dict "arg" $device "claim" $claim "device" $device) }}
{{- else }}
{{- $mount := printf "/data/%d" $n }}
{{- $disks = append $disks (dict "arg" (printf "%s/disk.img" $mount) "claim" $claim "mount" $mount) }}
{{- end }}
{{- else if .path }}
{{- $disks = append $disks (dict "arg" .path) }}
{{- else if .size }}
{{- $disks = append $disks (dict "arg" (toString .size) "size" (toString .size)) }}
{{- else }}
{{- fail (printf "VM %s: each vm.dataDisks entry needs one of size, path or claim" $.name) }}
{{- end }}
{{- end }}
{{- toYaml (dict "disks" $disks) }}
{{- end }}

{{/*
The default VM_DISK_SIZE (context: a VM): what the VM's volume can hold, as "<MiB>M".
  disk.size, a Kubernetes quantity (20Gi, 20G, 500Mi, 1.5Ti, 21474836480) in bytes B,
  less a reserve of 8% of B (rounded up) + 128 MiB: the volume's filesystem takes its share
    before the VM gets any (ext4: 5% reserved for root, ~2% inodes and journal; measured on
    fresh ext4 volumes of 512 MiB to 4 TiB it takes 5.8% to 11.9%, less than the reserve),
    and qcow2 needs room for its tables (~0.02% of the disk),
  less the data disks made on the same volume (vm.dataDisks' `size` entries, in whole MiB),
  rounded down to whole MiB, at most 64 TiB (kvm-manager's limit). 20Gi: 18713M.
kvm-manager refuses a size beyond the volume's free space, so the reserve must not be less
than what the filesystem takes; it also refuses a size below the base image's virtual size,
which the chart cannot know (vm.diskSizeFromVolume: false then).
*/}}
{{- define "kvm-manager.diskSizeFromVolume" -}}
{{- $mib := 1048576 }}
{{- $max := 70368744177664 }}
{{- $quantity := toString .v.disk.size }}
{{- $fix := "raise it, set vm.diskSize, or set vm.diskSizeFromVolume to false (the base image's size)" }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?([KMGTPE]i|[kKMGTPE])?$" $quantity) }}
{{- fail (printf "VM %s: disk.size %q is not a quantity the chart can size the VM's disk from (VM_DISK_SIZE): expected e.g. 20Gi, 20G or 500Mi; or set vm.diskSize, or vm.diskSizeFromVolume to false" .name $quantity) }}
{{- end }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity }}
{{- $units := dict "" 1 "k" 1000 "K" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- $unit := index $units (trimPrefix $number $quantity) }}
{{- $result := $max }}
{{- /* Beyond 1 PiB the result is more than 64 TiB anyway (and int64 could overflow). */}}
{{- if le (mulf $number $unit) 1125899906842624.0 }}
{{- $whole := regexReplaceAll "^0*([0-9])" (regexReplaceAll "\\..*$" $number "") "${1}" | atoi }}
{{- $fraction := regexFind "\\.[0-9]+$" $number }}
{{- $bytes := mul $whole $unit }}
{{- if $fraction }}
{{- $bytes = add $bytes (mulf (printf "0%s" $fraction) $unit | floor | int64) }}
{{- end }}
{{- $left := sub $bytes (add (div (add (mul $bytes 8) 99) 100) (mul 128 $mib)) }}
{{- $sized := false }}
{{- range (include "kvm-manager.dataDisks" . | fromYaml).disks }}
{{- with .size }}
{{- $sized = true }}
{{- $digits := regexReplaceAll "^0*([0-9])" (regexFind "^[0-9]+" .) "${1}" }}
{{- $binary := index (dict "" 1 "K" 1024 "M" 1048576 "G" 1073741824 "T" 1099511627776) (regexFind "[KMGTkmgt]" . | upper) }}
{{- if gt (mulf $digits $binary) (float64 $max) }}
{{- fail (printf "VM %s: vm.dataDisks size %q: at most 64 TiB (kvm-manager refuses more)" $.name .) }}
{{- end }}
{{- /* kvm-manager rounds a size up to whole MiB. */}}
{{- $left = sub $left (mul (div (add (mul (atoi $digits) $binary) (sub $mib 1)) $mib) $mib) }}
{{- end }}
{{- end }}
{{- if lt $left $mib }}
{{- $what := ternary ", and the size data disks made on it" "" $sized }}
{{- fail (printf "VM %s: disk.size %s leaves no room for the VM's disk (VM_DISK_SIZE) once 8%% + 128 MiB are kept for its filesystem and qcow2%s: %s" .name $quantity $what $fix) }}
{{- end }}
{{- $result = min (div $left $mib | mul $mib) $max }}
{{- end }}
{{- printf "%dM" (div $result $mib) }}
{{- end }}

{{/*
The Service ports of one VM (context: a VM), as YAML {ports: [...]}: service.ports, then VNC,
then the web console (one port for its page and its WebSocket).
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
{{- if .v.webConsole.enabled }}
{{- $port := int .v.webConsole.port }}
{{- $ports = append $ports (dict "name" "web-console" "port" $port "targetPort" $port "protocol" "TCP") }}
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
