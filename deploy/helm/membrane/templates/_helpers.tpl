{{/* Base name of every object: "membrane" unless nameOverride. */}}
{{- define "membrane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 50 | trimSuffix "-" -}}
{{- end -}}

{{- define "membrane.agentName" -}}{{ include "membrane.name" . }}-agent{{- end -}}
{{- define "membrane.operatorName" -}}{{ include "membrane.name" . }}-operator{{- end -}}
{{- define "membrane.configName" -}}{{ include "membrane.name" . }}-config{{- end -}}

{{/* Labels on every object. */}}
{{- define "membrane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: membrane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; argument: dict "ctx" $ "component" "agent" */}}
{{- define "membrane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "membrane.name" .ctx }}-{{ .component }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Image reference; argument: dict "image" <override> "root" .Values.image "ctx" $.
     Empty override fields fall back to root, an empty tag to the chart's appVersion. */}}
{{- define "membrane.image" -}}
{{- $o := .image | default dict -}}
{{- $repo := $o.repository | default .root.repository -}}
{{- $digest := $o.digest | default .root.digest -}}
{{- $tag := $o.tag | default .root.tag | default .ctx.Chart.AppVersion -}}
{{- if $digest -}}
{{- printf "%s@%s" $repo $digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (toString $tag) -}}
{{- end -}}
{{- end -}}

{{/* The agent's mode: "kubernetes" with the operator, "standalone" without. */}}
{{- define "membrane.agentMode" -}}
{{- ternary "kubernetes" "standalone" .Values.operator.enabled -}}
{{- end -}}

{{/* Prefix of the service environment variables kubelet sets for the operator Service
     (MEMBRANE_OPERATOR_SERVICE_HOST, ..._SERVICE_PORT_GRPC). */}}
{{- define "membrane.operatorServiceEnv" -}}
{{- include "membrane.operatorName" . | upper | replace "-" "_" | replace "." "_" -}}
{{- end -}}

{{/* The agent's config file as the agent reads it (AgentConfig keys). */}}
{{- define "membrane.agentConfig" -}}
{{- $a := .Values.agent -}}
{{- $cfg := dict
  "mode" (include "membrane.agentMode" .)
  "cluster_cidr" .Values.clusterCIDR
  "state_dir" $a.stateDir
  "bpffs_root" $a.bpffsRoot
  "api_socket" $a.apiSocket
  "masquerade" $a.masquerade
  "tunnel" $a.tunnel
  "tunnel_port" (int $a.tunnelPort)
  "log_level" $a.logLevel
  "log_format" $a.logFormat
  "conntrack_gc_seconds" $a.conntrackGCSeconds
  "resync_seconds" $a.resyncSeconds
  "xdp_mode" .Values.prefilter.xdpMode
  "lb_maglev_table_size" (int .Values.loadBalancer.maglevTableSize)
-}}
{{- if $a.devices -}}
{{- $_ := set $cfg "devices" $a.devices -}}
{{- end -}}
{{- if .Values.prefilter.denyCIDRs -}}
{{- $_ := set $cfg "prefilter_cidrs" "/etc/membrane/config/prefilter-cidrs.txt" -}}
{{- end -}}
{{- if not (kindIs "invalid" $a.mtu) -}}
{{- $_ := set $cfg "mtu" (int $a.mtu) -}}
{{- end -}}
{{- if and .Values.operator.enabled $a.operatorAddress -}}
{{- $_ := set $cfg "operator_address" $a.operatorAddress -}}
{{- end -}}
{{- if eq .Values.ipam.mode "static" -}}
{{- $_ := set $cfg "pod_cidr" .Values.ipam.podCIDR -}}
{{- end -}}
{{- toYaml (merge (deepCopy $a.extraConfig) $cfg) -}}
{{- end -}}

{{/* The CNI network configuration list (JSON). */}}
{{- define "membrane.conflist" -}}
{{- /* bandwidth: the runtime passes the pods' kubernetes.io/*-bandwidth limits; membrane shapes them. */ -}}
{{- $plugin := dict "type" "membrane-cni" "agentSocket" .Values.agent.apiSocket "capabilities" (dict "bandwidth" true) -}}
{{- $plugins := prepend (.Values.cni.chainedPlugins | default list) $plugin -}}
{{- $conf := dict "cniVersion" .Values.cni.cniVersion "name" .Values.cni.networkName "plugins" $plugins -}}
{{- toPrettyJson $conf -}}
{{- end -}}

{{/* Whether the init container node-config writes the config (PodCIDR from the Node
     object): only without the operator, which streams the PodCIDR itself. */}}
{{- define "membrane.nodeConfig" -}}
{{- if and (eq .Values.ipam.mode "kubernetes") (not .Values.operator.enabled) -}}true{{- end -}}
{{- end -}}

{{/* Path of the config file the agent reads. */}}
{{- define "membrane.agentConfigPath" -}}
{{- if include "membrane.nodeConfig" . -}}/etc/membrane/node/config.yaml{{- else -}}/etc/membrane/config/config.yaml{{- end -}}
{{- end -}}

{{/* Environment shared by the agent and its node-config init container. */}}
{{- define "membrane.agentEnv" -}}
- name: MEMBRANE_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
# The VXLAN endpoint of this node: the address kubelet reports for it.
- name: MEMBRANE_NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- if .Values.k8sServiceHost }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.k8sServiceHost | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.k8sServicePort | default "443" | quote }}
{{- end }}
{{- end -}}

{{/* Whether the agents and the operator talk mutual TLS (only Kubernetes mode talks at all). */}}
{{- define "membrane.tls" -}}
{{- if and .Values.operator.enabled .Values.tls.enabled -}}true{{- end -}}
{{- end -}}

{{/* The projected service account token, as automountServiceAccountToken would mount it. */}}
{{- define "membrane.kubeApiAccessVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                fieldPath: metadata.namespace
{{- end -}}
