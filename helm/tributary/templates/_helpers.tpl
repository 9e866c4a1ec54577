{{- define "tributary.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tributary.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tributary.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tributary.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tributary
{{- end -}}

{{- define "tributary.selector" -}}
app.kubernetes.io/name: {{ include "tributary.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The service account of a component: {root, component}. */}}
{{- define "tributary.serviceAccountName" -}}
{{- printf "%s-%s" (include "tributary.fullname" .root) .component -}}
{{- end -}}

{{- define "tributary.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The hardened container security context shared by every container. */}}
{{- define "tributary.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "tributary.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Environment shared by both components. */}}
{{- define "tributary.env" -}}
- name: TRIBUTARY_CONFIG
  value: /etc/tributary/fleet.toml
- name: TRIBUTARY_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: AWS_REGION
  value: {{ .Values.fleet.aws.region | quote }}
{{- if eq .Values.fleet.warehouse.kind "postgres" }}
- name: TRIBUTARY_WAREHOUSE_POSTGRES
  valueFrom:
    secretKeyRef:
      name: {{ required "fleet.warehouse.postgresSecret.name is required for kind postgres" .Values.fleet.warehouse.postgresSecret.name }}
      key: {{ .Values.fleet.warehouse.postgresSecret.key }}
{{- end }}
{{- range .Values.extraEnv }}
- name: {{ .name }}
  value: {{ .value | quote }}
{{- end }}
{{- end -}}

{{- define "tributary.volumes" -}}
- name: config
  configMap:
    name: {{ include "tributary.fullname" . }}-fleet
- name: pipelines
  projected:
    sources:
      - configMap:
          name: {{ include "tributary.fullname" . }}-pipelines
{{- if .Values.extraSecretFiles.secretName }}
      - secret:
          name: {{ .Values.extraSecretFiles.secretName }}
          items:
{{ toYaml .Values.extraSecretFiles.items | indent 12 }}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "tributary.volumeMounts" -}}
- name: config
  mountPath: /etc/tributary/fleet.toml
  subPath: fleet.toml
  readOnly: true
- name: pipelines
  mountPath: /etc/tributary/pipelines
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}
