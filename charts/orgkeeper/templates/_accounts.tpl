{{/* The controller's account directory (values: accounts). Credentials are Secret files mounted read-only under
/etc/orgkeeper/accounts; only their paths reach the environment. */}}
{{- define "orgkeeper.accountsEnv" -}}
{{- $a := .Values.accounts -}}
- name: ORGKEEPER_ACCOUNT_CHECK_TIMEOUT
  value: {{ $a.timeout | quote }}
- name: ORGKEEPER_ACCOUNT_CACHE_TTL
  value: {{ $a.cacheTtl | quote }}
- name: ORGKEEPER_ACCOUNT_NEGATIVE_CACHE_TTL
  value: {{ $a.negativeCacheTtl | quote }}
{{- if $a.github.enabled }}
- name: ORGKEEPER_CHECK_GITHUB
  value: "true"
- name: ORGKEEPER_GITHUB_API_URL
  value: {{ $a.github.apiUrl | quote }}
{{- with $a.github.organization }}
- name: ORGKEEPER_GITHUB_ORG
  value: {{ . | quote }}
{{- end }}
{{- if $a.github.tokenSecret }}
- name: ORGKEEPER_GITHUB_TOKEN_FILE
  value: /etc/orgkeeper/accounts/github/{{ $a.github.tokenSecretKey }}
{{- end }}
{{- end }}
{{- if $a.google.enabled }}
- name: ORGKEEPER_GOOGLE_CREDENTIALS_FILE
  value: /etc/orgkeeper/accounts/google/{{ $a.google.credentialsSecretKey }}
- name: ORGKEEPER_GOOGLE_ADMIN_SUBJECT
  value: {{ required "accounts.google.adminSubject is required when accounts.google.enabled" $a.google.adminSubject | quote }}
- name: ORGKEEPER_GOOGLE_DIRECTORY_URL
  value: {{ $a.google.directoryUrl | quote }}
{{- end }}
{{- end }}

{{- define "orgkeeper.accountsVolumeMounts" -}}
{{- $a := .Values.accounts -}}
{{- if and $a.github.enabled $a.github.tokenSecret }}
- name: github-token
  mountPath: /etc/orgkeeper/accounts/github
  readOnly: true
{{- end }}
{{- if $a.google.enabled }}
- name: google-credentials
  mountPath: /etc/orgkeeper/accounts/google
  readOnly: true
{{- end }}
{{- end }}

{{- define "orgkeeper.accountsVolumes" -}}
{{- $a := .Values.accounts -}}
{{- if and $a.github.enabled $a.github.tokenSecret }}
- name: github-token
  secret:
    secretName: {{ $a.github.tokenSecret }}
    defaultMode: 0400
    items:
      - key: {{ $a.github.tokenSecretKey }}
        path: {{ $a.github.tokenSecretKey }}
{{- end }}
{{- if $a.google.enabled }}
- name: google-credentials
  secret:
    secretName: {{ required "accounts.google.credentialsSecret is required when accounts.google.enabled" $a.google.credentialsSecret }}
    defaultMode: 0400
    items:
      - key: {{ $a.google.credentialsSecretKey }}
        path: {{ $a.google.credentialsSecretKey }}
{{- end }}
{{- end }}
