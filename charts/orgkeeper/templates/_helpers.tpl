{{/* Names, labels and shared pieces of the pod specs. */}}

{{- define "orgkeeper.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-orgkeeper, or the release name alone when it already contains the chart name. */}}
{{- define "orgkeeper.fullname" -}}
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

{{/* Names of the parts; kept under 63 characters so they are valid Service names too. */}}
{{- define "orgkeeper.controller.fullname" -}}
{{- printf "%s-controller" (include "orgkeeper.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "orgkeeper.dataPlane.fullname" -}}
{{- printf "%s-data-plane" (include "orgkeeper.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{- define "orgkeeper.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "orgkeeper.labels" -}}
helm.sh/chart: {{ include "orgkeeper.chart" . }}
app.kubernetes.io/name: {{ include "orgkeeper.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: orgkeeper
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's pods: its selector labels and the rest of the common labels. Call with (dict "root" $
"component" "controller" "extra" .Values.controller.podLabels). */}}
{{- define "orgkeeper.podLabels" -}}
{{ include "orgkeeper.selectorLabels" . }}
helm.sh/chart: {{ include "orgkeeper.chart" .root }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: orgkeeper
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: call with (dict "root" $ "component" "controller"). */}}
{{- define "orgkeeper.selectorLabels" -}}
app.kubernetes.io/name: {{ include "orgkeeper.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "orgkeeper.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "orgkeeper.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "orgkeeper.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Environment shared by every container: the store and logging. */}}
{{- define "orgkeeper.commonEnv" -}}
- name: ORGKEEPER_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret }}
      key: {{ .Values.database.secretKey }}
- name: ORGKEEPER_LOG_LEVEL
  value: {{ .Values.logging.level | quote }}
- name: ORGKEEPER_LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
{{- end }}

{{/* HTTP probes on a component's metrics port. */}}
{{- define "orgkeeper.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: metrics
  initialDelaySeconds: {{ .liveness.initialDelaySeconds }}
  periodSeconds: {{ .liveness.periodSeconds }}
  timeoutSeconds: {{ .liveness.timeoutSeconds }}
  failureThreshold: {{ .liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  initialDelaySeconds: {{ .readiness.initialDelaySeconds }}
  periodSeconds: {{ .readiness.periodSeconds }}
  timeoutSeconds: {{ .readiness.timeoutSeconds }}
  failureThreshold: {{ .readiness.failureThreshold }}
{{- end }}

{{/* The controller's rules on orgkeeper resources, Secrets and Events: the same in a ClusterRole (all
namespaces) or in a Role per watched namespace. They are docs/controller-rbac.yaml's, the role the controller's
end-to-end tests run under (tests/chart checks that the two agree). Why each verb: docs/helm.md#permissions. */}}
{{- define "orgkeeper.controllerRules" -}}
- apiGroups: ["orgkeeper.dev"]
  resources: ["organizations", "environments", "users", "apikeys"]
  # watch the resources; patch only to add and remove the controller's finalizer (never spec)
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["orgkeeper.dev"]
  resources: ["organizations/status", "environments/status", "users/status", "apikeys/status"]
  # statuses, written with server-side apply
  verbs: ["get", "patch"]
- apiGroups: ["orgkeeper.dev"]
  resources: ["apikeys/finalizers"]
  # lets the key Secrets carry an owner reference with blockOwnerDeletion
  verbs: ["update"]
- apiGroups: ["orgkeeper.dev"]
  resources: ["environments", "apikeys", "users"]
  # the rights the generated per-organization Roles grant: Kubernetes lets the controller create and bind a
  # Role only with rights it holds, so it holds these instead of escalate/bind
  verbs: ["create", "update", "delete"]
- apiGroups: ["orgkeeper.dev"]
  resources: ["organizations"]
  verbs: ["update", "delete", "manage-organization"]
- apiGroups: ["orgkeeper.dev"]
  resources: ["environments"]
  verbs: ["manage-production"]
- apiGroups: ["orgkeeper.dev"]
  resources: ["users"]
  verbs: ["manage-users"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  # the generated Roles and RoleBindings, server-side applied (garbage collection deletes them)
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["configmaps"]
  # the admission policy's parameters, one ConfigMap per organization (server-side apply: no read needed)
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  # create a key's Secret once per key; update it when its ApiKey rotates (never delete: garbage collection
  # follows the owner reference); watch Secrets as metadata only, so a deleted Secret shows as
  # SecretMissing at once
  verbs: ["get", "list", "watch", "create", "update"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The pod-level parts both Deployments share: image pull secrets, security context, scheduling. Call with
(dict "root" $ "pod" .Values.controller). */}}
{{- define "orgkeeper.podScheduling" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .pod.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .pod.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The OSO_URL new keys' Secrets carry: controller.osoUrl, else the data plane's Service (the enforcing
sidecar). validate.yaml refuses an empty osoUrl without the data plane. */}}
{{- define "orgkeeper.osoUrl" -}}
{{- if .Values.controller.osoUrl }}
{{- .Values.controller.osoUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "orgkeeper.dataPlane.fullname" .) .Release.Namespace .Values.dataPlane.sidecar.port }}
{{- end }}
{{- end }}

{{/* Peers that may scrape the metrics ports: the namespaces named in networkPolicy.metricsNamespaces (by the
kubernetes.io/metadata.name label the API server sets) and networkPolicy.metricsFrom. Empty: nobody. */}}
{{- define "orgkeeper.metricsPeers" -}}
{{- $np := .Values.networkPolicy }}
{{- with $np.metricsNamespaces }}
- namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values:
          {{- toYaml . | nindent 10 }}
{{- end }}
{{- with $np.metricsFrom }}
{{ toYaml . }}
{{- end }}
{{- end }}
