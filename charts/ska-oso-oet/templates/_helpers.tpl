{{/* The release's base name: <release>-ska-oso-oet (or the release name when it has it). */}}
{{- define "oet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "oet.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
function: {{ .Values.deviceServers.oet.function }}
domain: {{ .Values.deviceServers.oet.domain }}
{{- with .Values.labels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "oet.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* TANGO_HOST: global.tango_host, else tango_host (both may use templates). */}}
{{- define "oet.tangoHost" -}}
{{- $host := coalesce .Values.global.tango_host .Values.tango_host | toString -}}
{{- if not $host }}{{ fail "set tango_host (or global.tango_host) to the Tango database's host:port" }}{{ end -}}
{{- tpl $host . -}}
{{- end -}}

{{- define "oet.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if .Values.image.registry -}}
{{- printf "%s/%s:%s" .Values.image.registry .Values.image.name $tag -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.name $tag -}}
{{- end -}}
{{- end -}}

{{/* The server instances deployed: "1" .. "<subarrays>", as a JSON list. */}}
{{- define "oet.instances" -}}
{{- $count := int .Values.subarrays -}}
{{- if lt $count 1 }}{{ fail "subarrays must be at least 1" }}{{ end -}}
{{- $names := list -}}
{{- range $i := until $count }}{{ $names = append $names (toString (add1 $i)) }}{{ end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
The dsconfig JSON of every deployed instance, from deviceServers.oet (the same rule as
ska_oso_oet.run.load_config): an instance listed in server.instances is taken as it is; an
unlisted one, n, copies instance "1" and serves, per class, its first device renamed
<domain>/<family>/<n> with that device's properties. Property values are lists of strings.
*/}}
{{- define "oet.dsconfig" -}}
{{- $server := .Values.deviceServers.oet.server -}}
{{- $listed := dict -}}
{{- range $server.instances }}{{ $_ := set $listed (toString .name) . }}{{ end -}}
{{- if not (hasKey $listed "1") }}{{ fail "deviceServers.oet.server.instances must list instance \"1\"" }}{{ end -}}
{{- $template := get $listed "1" -}}
{{- $instances := dict -}}
{{- range $n := (include "oet.instances" . | fromJsonArray) -}}
{{- $classes := dict -}}
{{- if hasKey $listed $n -}}
{{- range $class := (get $listed $n).classes -}}
{{- $devices := dict -}}
{{- range $device := $class.devices -}}
{{- $props := dict -}}
{{- range $device.properties }}{{ $_ := set $props .name (toStrings (.values | default list)) }}{{ end -}}
{{- $_ := set $devices $device.name (dict "properties" $props) -}}
{{- end -}}
{{- $_ := set $classes $class.name $devices -}}
{{- end -}}
{{- else -}}
{{- range $class := $template.classes -}}
{{- $device := first $class.devices -}}
{{- $props := dict -}}
{{- range $device.properties }}{{ $_ := set $props .name (toStrings (.values | default list)) }}{{ end -}}
{{- $name := printf "%s/%s" (dir $device.name) $n -}}
{{- $_ := set $classes $class.name (dict $name (dict "properties" $props)) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $instances $n $classes -}}
{{- end -}}
{{- dict "servers" (dict $server.name $instances) | toJson -}}
{{- end -}}

{{/* The devices served by instance .n, as a JSON list (from the dsconfig above). */}}
{{- define "oet.devicesOf" -}}
{{- $config := include "oet.dsconfig" .root | fromJson -}}
{{- $names := list -}}
{{- range $server, $instances := $config.servers -}}
{{- range $class, $devices := get $instances $.n -}}
{{- range $name, $_ := $devices }}{{ $names = append $names $name }}{{ end -}}
{{- end -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}
