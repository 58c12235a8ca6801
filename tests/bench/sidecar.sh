#!/usr/bin/env bash
# Benchmarks the sidecar on loopback and prints a table. Not a test: it measures, prints, and says which
# targets were met on this run.
#
# In front of each of two upstreams - nginx answering a fixed JSON body (it costs almost nothing, so the
# proxy's own cost shows) and `orgkeeper facts` on SQLite (the end-to-end figure) - one after the other
# with the same load (wrk, same connections and duration):
#   1. the upstream direct;
#   2. through the sidecar, keys valid and limits high enough never to reject, rotating over 9,990 keys
#      of 999 environments (so every environment has limiter and metrics state), as started by default
#      (it finds out whether the upstream speaks HTTP/2 and uses it); with one worker when its default is
#      more; with last-use tracking off (--key-use-flush-interval off), for what tracking costs; and, in
#      front of orgkeeper facts, forced to HTTP/1.1;
#   3. nginx as a reverse proxy with limit_req keyed by the Authorization header, same keys, same upstream,
#      as configured by default (worker_processes auto: one per CPU) and with one worker;
#   4. the rejection path: one key of an environment allowed 1 request a minute (almost all 429), through
#      the sidecar and through nginx's limit_req (limit_req_status 429), for reference;
#   5. the sidecar with shared limits (--redis-url, a redis-server of its own) next to the sidecar without,
#      with the Redis commands it cost per second against the requests per second (when redis-server is
#      installed: apt-get install -y redis-server).
# Then the sidecar's memory (RSS) holding 10,000 keys of 1,000 environments.
#
# BENCH_UPSTREAM=both (the default; static only when the binary has no `facts` command), static or facts.
# BENCH_UPSTREAM=instructions measures instead the user-space instructions a forwarded request costs (under
# valgrind's callgrind, in front of the static upstream: this build, BASELINE_BIN's, and nginx's limit_req
# proxy with one worker): on a shared machine whose CPU time moves by a fifth between rounds, the steady
# figure for comparing builds, and the sidecar with nginx.
#
# Needs: wrk, nginx (apt-get install -y wrk nginx), python3, a release build (built if missing).
# Knobs: DURATION (default 10s), ROUNDS (3), CONNECTIONS (64), THREADS (2), SIDECAR_WORKERS (the sidecar's
# --workers; its default when unset), ORGKEEPER_BIN, BASELINE_BIN (another build, e.g. main's: its forwarding
# row runs in every round next to this build's, for an interleaved A/B).
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
BENCH_UPSTREAM=${BENCH_UPSTREAM:-both}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ORGKEEPER_BIN:-$ROOT/target/release/orgkeeper}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/orgkeeper-bench.XXXXXX")
PIDS=()

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -z ${REDIS_PORT:-} ]] || redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
  for conf in "$WORK"/nginx-*.conf; do
    [[ -f $conf ]] && nginx -p "$WORK" -c "$conf" -s stop 2>/dev/null || true
  done
  wait 2>/dev/null || true
  [[ -n ${KEEP_WORK:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

for tool in wrk nginx python3; do
  command -v "$tool" >/dev/null || die "$tool not found: apt-get install -y wrk nginx python3"
done
if [[ ! -x $BIN ]]; then
  log "building the release binary"
  (cd "$ROOT" && cargo build --release --bin orgkeeper >&2)
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# A redis-server of the benchmark's own for the "sidecar with Redis" runs (none: those runs are skipped).
REDIS_PORT=""
if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
  REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --daemonize no \
    >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
else
  log "redis-server or redis-cli not found: no \"sidecar with Redis\" runs (apt-get install -y redis-server)"
fi
# Commands clients sent Redis so far (the scripts' own calls inside Redis are not round trips).
redis_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '$1 ~ /^cmdstat_(evalsha|eval|script\|load|ping|hello|client\|setinfo)$/ {n += $3} END {print n + 0}'
}

wait_http() { # URL: wait until it answers at all
  for _ in $(seq 1 300); do
    curl -s -o /dev/null "$1" 2>/dev/null && return 0
    python3 - "$1" <<'EOF' 2>/dev/null && return 0
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass
EOF
    sleep 0.1
  done
  die "nothing answers at $1"
}

wait_ready() { # METRICS_URL: wait until /readyz is 200
  for _ in $(seq 1 600); do
    python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/readyz', timeout=1)" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  die "the sidecar never became ready ($1/readyz)"
}

# --- 1. A store with 100 organizations x 10 environments x 10 keys ---------------------------------
log "generating 100 organizations, 1,000 environments and 10,000 API keys"
python3 - "$WORK/manifests" <<'EOF'
import os, sys
root = sys.argv[1]
os.makedirs(root)
for o in range(100):
    org = f"org-{o:03d}"
    docs = [f"""apiVersion: orgkeeper.dev/v1alpha1
kind: Organization
metadata: {{name: {org}, namespace: bench}}
spec:
  displayName: {org}
  plan: Growth
  limits: {{requestsPerMinute: 1000000000, maxConcurrentRequests: 1000000}}
"""]
    envs = ["production", "development"] + [f"env-{i}" for i in range(1, 9)]
    for env in envs[2:]:
        limits = "{requestsPerMinute: 1}" if (o, env) == (0, "env-1") else "{}"
        docs.append(f"""apiVersion: orgkeeper.dev/v1alpha1
kind: Environment
metadata: {{name: {org}-{env}, namespace: bench}}
spec:
  organizationRef: {{name: {org}}}
  displayName: {env}
  limits: {limits}
""")
    for env in envs:
        env_name = env if env in ("production", "development") else f"{org}-{env}"
        for k in range(10):
            name = f"{org}-{env}-k{k}"
            docs.append(f"""apiVersion: orgkeeper.dev/v1alpha1
kind: ApiKey
metadata: {{name: {name}, namespace: bench}}
spec:
  organizationRef: {{name: {org}}}
  environment: {env_name}
  access: ReadWrite
  secret: {{name: {name}}}
""")
    with open(os.path.join(root, f"{org}.yaml"), "w") as f:
        f.write("---\n".join(docs))
EOF
DB="sqlite://$WORK/bench.db"
log "orgkeeper apply (issues 10,000 keys)"
"$BIN" apply -f "$WORK/manifests" --database-url "$DB" --secrets-dir "$WORK/secrets" >/dev/null
python3 - "$WORK" <<'EOF'
import base64, glob, os, sys
work = sys.argv[1]
rotating, limited = [], []
for path in sorted(glob.glob(os.path.join(work, "secrets", "bench", "*.yaml"))):
    key = next(base64.b64decode(line.split(":", 1)[1].strip()).decode()
               for line in open(path) if line.strip().startswith("OSO_AUTH:"))
    (limited if "/org-000-env-1-k" in path else rotating).append(key)
assert len(rotating) == 9990 and len(limited) == 10, (len(rotating), len(limited))
open(os.path.join(work, "keys-rotating.txt"), "w").write("\n".join(rotating) + "\n")
open(os.path.join(work, "keys-limited.txt"), "w").write(limited[0] + "\n")
EOF

# --- 2. Processes ------------------------------------------------------------------------------------
nginx_conf() { # NAME BODY [WORKERS]: writes and starts an nginx with that http block
  nginx_conf_file "$@"
  nginx -p "$WORK" -c "$WORK/nginx-$1.conf"
}
nginx_conf_file() { # NAME BODY [WORKERS] [MAIN]: only writes it; MAIN opens the file (e.g. "daemon off;")
  local conf="$WORK/nginx-$1.conf"
  mkdir -p "$WORK/logs" "$WORK/tmp-$1"
  cat >"$conf" <<EOF
${4:-}
worker_processes ${3:-auto};
pid $WORK/nginx-$1.pid;
error_log $WORK/logs/$1-error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp-$1/body;
  proxy_temp_path $WORK/tmp-$1/proxy;
  fastcgi_temp_path $WORK/tmp-$1/fastcgi;
  uwsgi_temp_path $WORK/tmp-$1/uwsgi;
  scgi_temp_path $WORK/tmp-$1/scgi;
  keepalive_requests 1000000;
  $2
}
EOF
}
nginx_stop() { # NAME
  nginx -p "$WORK" -c "$WORK/nginx-$1.conf" -s stop 2>/dev/null || true
  rm -f "$WORK/nginx-$1.conf"
}
nginx_workers() { pgrep -P "$(cat "$WORK/nginx-$1.pid")" | tr '\n' ' '; }
nginx_proxy() { # NAME PORT WORKERS UPSTREAM_PORT
  nginx_conf "$1" "$(nginx_proxy_http "$2" "$4")" "$3"
}
nginx_proxy_http() { # PORT UPSTREAM_PORT: the limit_req proxy's http block
  echo "
  upstream facts { server 127.0.0.1:$2; keepalive 128; }
  limit_req_zone \$http_authorization zone=keys:32m rate=1000000r/s;
  server {
    listen 127.0.0.1:$1;
    location / {
      limit_req zone=keys burst=1000000 nodelay;
      proxy_pass http://facts;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
}
nginx_refusing() { # NAME PORT UPSTREAM_PORT: nginx's own refusal path, for the sidecar's 429 row: one
  # request a minute per Authorization value, the rest answered 429 by limit_req itself
  nginx_conf "$1" "
  upstream facts { server 127.0.0.1:$3; keepalive 128; }
  limit_req_zone \$http_authorization zone=keys:32m rate=1r/m;
  limit_req_status 429;
  server {
    listen 127.0.0.1:$2;
    location / {
      limit_req zone=keys;
      proxy_pass http://facts;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }"
}
sidecar() { # LOG UPSTREAM_PORT METRICS_PORT LISTEN_PORT ARGS...: starts a sidecar, its PID in STARTED
  local log=$1 upstream=$2 metrics=$3 listen=$4
  shift 4
  ORGKEEPER_LOG_LEVEL=info "${SIDECAR_BIN:-$BIN}" sidecar "$@" --listen "127.0.0.1:$listen" --upstream "http://127.0.0.1:$upstream" \
    --database-url "$DB" --metrics-addr "127.0.0.1:$metrics" 2>"$WORK/$log" &
  STARTED=$!
  PIDS+=("$STARTED")
  wait_ready "http://127.0.0.1:$metrics"
}
rss() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
metric() { # METRICS_URL NAME
  python3 -c "import urllib.request,sys; print([l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith(sys.argv[2] + ' ')][0].split()[1])" "$1/metrics" "$2"
}
# The sidecar's own default, read from its help, decides whether a separate one-worker sidecar is needed.
DEFAULT_WORKERS=${SIDECAR_WORKERS:-$("$BIN" sidecar --help | tr -s ' \n' ' ' | grep -o -- '--workers <WORKERS>[^[]*\[env: [^]]*\] \[default: [0-9]*' | grep -o '[0-9]*$' || echo 1)}
WORKER_ARGS=(${SIDECAR_WORKERS:+--workers "$SIDECAR_WORKERS"})

# --- 3. Load ------------------------------------------------------------------------------------------
cat >"$WORK/keys.lua" <<'EOF'
-- Each request carries the next key of KEYS_FILE (a real client population, not one hot key).
local keys = {}
for line in io.lines(os.getenv("KEYS_FILE")) do keys[#keys + 1] = line end
local i = math.random(#keys)
request = function()
  i = i % #keys + 1
  return wrk.format("GET", "/api/facts?predicate=has_role&args.0.type=User&args.0.id=alice",
    { ["Authorization"] = "Bearer " .. keys[i] })
end
EOF

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
ticks() { # PID...: CPU ticks used so far by these processes (a process's stat sums all its threads, even
  # threads that have exited, which reading each task's stat would miss or race with)
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
user_ticks() { # PID...: the part of ticks spent in user space (the proxy's own code, not the kernel's TCP)
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14}' "/proc/$pid/stat")))
  done
  echo "$total"
}
run() { # GROUP LABEL PORT KEYS_FILE PIDS...: one measured wrk run; PIDS are the processes whose CPU is
  # counted (the upstream's is counted too: how a proxy drives the upstream changes what each request
  # costs there)
  local group=$1 label=$2 port=$3 keys=$4 out="$WORK/wrk.txt"
  shift 4
  log "$group, $label: $DURATION with $CONNECTIONS connections"
  KEYS_FILE=$keys wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  local before after user_before user_after upstream_before upstream_after redis_before="" started
  upstream_before=$(ticks $UPSTREAM_PIDS)
  before=$(ticks "$@")
  user_before=$(user_ticks "$@")
  [[ $label != *Redis* ]] || { redis_before=$(redis_calls); started=$(date +%s.%N); }
  KEYS_FILE=$keys wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/keys.lua" \
    "http://127.0.0.1:$port/" >"$out"
  after=$(ticks "$@")
  user_after=$(user_ticks "$@")
  upstream_after=$(ticks $UPSTREAM_PIDS)
  if [[ -n $redis_before ]]; then
    printf '%s\t%s\t%s\n' "$group" "$(($(redis_calls) - redis_before))" \
      "$(python3 -c "import sys, time; print(time.time() - float(sys.argv[1]))" "$started")" >>"$WORK/redis.tsv"
  fi
  python3 - "$group" "$label" "$out" "$((after - before))" "$(getconf CLK_TCK)" \
    "$((upstream_after - upstream_before))" "$((user_after - user_before))" >>"$RESULTS" <<'PY'
import re, sys
group, label, text, ticks, hz = sys.argv[1], sys.argv[2], open(sys.argv[3]).read(), int(sys.argv[4]), int(sys.argv[5])
upstream_ticks, user_ticks = int(sys.argv[6]), int(sys.argv[7])
def ms(value):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
total = int(re.search(r"(\d+) requests in", text).group(1))
non2xx = int((re.search(r"Non-2xx or 3xx responses: (\d+)", text) or [0, 0])[1])
errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
cpu_us = 1e6 * ticks / hz / max(total, 1)
user_us = 1e6 * user_ticks / hz / max(total, 1)
upstream_us = 1e6 * upstream_ticks / hz / max(total - non2xx, 1)
print(f"{group}\t{label}\t{rps:.0f}\t{p50:.2f}\t{p99:.2f}\t{100.0 * non2xx / max(total, 1):.1f}\t{errors}"
      f"\t{cpu_us:.1f}\t{user_us:.1f}\t{upstream_us:.1f}")
PY
}

# --- 4. One upstream at a time: start it and the proxies in front of it, run the rounds, stop them -----
MEMORY="$WORK/memory.tsv"
: >"$MEMORY"
bench() { # static|facts
  local kind=$1 group up_port pids_before=${#PIDS[@]}
  up_port=$(free_port)
  if [[ $kind == facts ]]; then
    group="orgkeeper facts"
    "$BIN" facts --listen "127.0.0.1:$up_port" --database-url "$DB" --metrics-addr "127.0.0.1:$(free_port)" \
      2>"$WORK/logs-facts.txt" &
    PIDS+=($!)
    UPSTREAM_PIDS=$!
  else
    group="static"
    nginx_conf "$kind-upstream" \
      "server { listen 127.0.0.1:$up_port; location / { default_type application/json; return 200 '[]'; } }"
  fi
  wait_http "http://127.0.0.1:$up_port/api/healthcheck"
  [[ $kind == facts ]] || UPSTREAM_PIDS=$(nginx_workers "$kind-upstream")

  local port metrics main_pid loaded port1="" pid1="" port_h1="" pid_h1=""
  port=$(free_port)
  metrics=$(free_port)
  sidecar "logs-sidecar-$kind.txt" "$up_port" "$metrics" "$port" "${WORKER_ARGS[@]}"
  main_pid=$STARTED
  loaded=$(rss "$main_pid" VmRSS)
  if [[ $DEFAULT_WORKERS != 1 ]]; then
    port1=$(free_port)
    sidecar "logs-sidecar-$kind-1.txt" "$up_port" "$(free_port)" "$port1" --workers 1
    pid1=$STARTED
  fi
  local port_off pid_off
  port_off=$(free_port)
  sidecar "logs-sidecar-$kind-off.txt" "$up_port" "$(free_port)" "$port_off" "${WORKER_ARGS[@]}" \
    --key-use-flush-interval off
  pid_off=$STARTED
  if [[ $kind == facts ]]; then
    # Forced to HTTP/1.1, for comparison (the default finds out that orgkeeper facts speaks HTTP/2).
    port_h1=$(free_port)
    sidecar "logs-sidecar-$kind-http1.txt" "$up_port" "$(free_port)" "$port_h1" "${WORKER_ARGS[@]}" \
      --upstream-protocol http1
    pid_h1=$STARTED
  fi
  local port_baseline="" pid_baseline=""
  if [[ -n ${BASELINE_BIN:-} ]]; then
    port_baseline=$(free_port)
    SIDECAR_BIN=$BASELINE_BIN sidecar "logs-sidecar-$kind-baseline.txt" "$up_port" "$(free_port)" "$port_baseline" \
      "${WORKER_ARGS[@]}"
    pid_baseline=$STARTED
  fi
  local port_redis="" pid_redis=""
  if [[ -n $REDIS_PORT ]]; then
    port_redis=$(free_port)
    sidecar "logs-sidecar-$kind-redis.txt" "$up_port" "$(free_port)" "$port_redis" "${WORKER_ARGS[@]}" \
      --redis-url "redis://127.0.0.1:$REDIS_PORT"
    pid_redis=$STARTED
  fi
  local nginx_port nginx1_port nginx_refusing_port
  nginx_port=$(free_port)
  nginx1_port=$(free_port)
  nginx_refusing_port=$(free_port)
  nginx_proxy "$kind-proxy" "$nginx_port" auto "$up_port"
  nginx_proxy "$kind-proxy1" "$nginx1_port" 1 "$up_port"
  nginx_refusing "$kind-refusing" "$nginx_refusing_port" "$up_port"
  wait_http "http://127.0.0.1:$nginx_port/"
  wait_http "http://127.0.0.1:$nginx1_port/"
  wait_http "http://127.0.0.1:$nginx_refusing_port/"

  # Rounds interleave the runs, so that load from other processes on the machine hits them alike; the
  # report takes each run's median over the rounds.
  local rotating="$WORK/keys-rotating.txt" round
  for round in $(seq 1 "$ROUNDS"); do
    log "$group: round $round of $ROUNDS"
    run "$group" "upstream direct" "$up_port" "$rotating" $UPSTREAM_PIDS
    run "$group" "sidecar (forwarding)" "$port" "$rotating" "$main_pid"
    [[ -z $pid_baseline ]] || run "$group" "baseline build (BASELINE_BIN), forwarding" "$port_baseline" "$rotating" \
      "$pid_baseline"
    run "$group" "sidecar, last-use tracking off" "$port_off" "$rotating" "$pid_off"
    [[ -z $pid_redis ]] || run "$group" "sidecar with Redis (shared limits)" "$port_redis" "$rotating" "$pid_redis"
    [[ -z $pid1 ]] || run "$group" "sidecar, 1 worker" "$port1" "$rotating" "$pid1"
    [[ -z $pid_h1 ]] || run "$group" "sidecar, HTTP/1.1 to the upstream" "$port_h1" "$rotating" "$pid_h1"
    run "$group" "nginx limit_req proxy" "$nginx_port" "$rotating" $(nginx_workers "$kind-proxy")
    run "$group" "nginx limit_req proxy, 1 worker" "$nginx1_port" "$rotating" $(nginx_workers "$kind-proxy1")
    run "$group" "sidecar (429 path)" "$port" "$WORK/keys-limited.txt" "$main_pid"
    run "$group" "nginx limit_req proxy (429 path)" "$nginx_refusing_port" "$WORK/keys-limited.txt" \
      $(nginx_workers "$kind-refusing")
  done
  local protocol description
  protocol=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/logs-sidecar-$kind.txt" | grep -o 'protocol="[^"]*"' | tail -1 | cut -d'"' -f2)
  description=$([[ $kind == facts ]] && echo "orgkeeper facts on SQLite" || echo "nginx answering a fixed JSON body")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$group" "$loaded" "$(rss "$main_pid" VmRSS)" \
    "$(rss "$main_pid" VmHWM)" "$(metric "http://127.0.0.1:$metrics" orgkeeper_sidecar_keys)" \
    "$(metric "http://127.0.0.1:$metrics" orgkeeper_sidecar_environments)" "${protocol:-?}" "$description" \
    >>"$MEMORY"
  [[ -z $pid_redis ]] || printf '%s\t%s\n' "$group" "$(rss "$pid_redis" VmHWM)" >>"$WORK/redis-memory.tsv"

  # Stopped before the next upstream's runs, so that they do not share the machine with idle processes.
  local pid
  for pid in "${PIDS[@]:$pids_before}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  PIDS=("${PIDS[@]:0:$pids_before}")
  nginx_stop "$kind-proxy"
  nginx_stop "$kind-proxy1"
  nginx_stop "$kind-refusing"
  [[ $kind == facts ]] || nginx_stop "$kind-upstream"
}
sidecar_instructions() { # BIN LABEL: refresh and last-use flushes off, so only the request path counts
  local port metrics pid
  port=$(free_port)
  metrics=$(free_port)
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-$port.out" "$1" sidecar \
    --listen "127.0.0.1:$port" --upstream "http://127.0.0.1:$UPSTREAM_PORT" --database-url "$DB" \
    --metrics-addr "127.0.0.1:$metrics" --refresh-interval 1h --key-use-flush-interval off \
    2>"$WORK/logs-callgrind-$port.txt" &
  pid=$!
  PIDS+=("$pid")
  wait_ready "http://127.0.0.1:$metrics"
  count_instructions "$2" "$port" "$pid"
}
nginx_instructions() { # the limit_req proxy with one worker, in the foreground so that valgrind follows it
  local port pid
  port=$(free_port)
  nginx_conf_file instructions-proxy "$(nginx_proxy_http "$port" "$UPSTREAM_PORT")" 1 "daemon off; master_process off;"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind-$port.out" \
    nginx -p "$WORK" -c "$WORK/nginx-instructions-proxy.conf" 2>"$WORK/logs-callgrind-$port.txt" &
  pid=$!
  PIDS+=("$pid")
  wait_http "http://127.0.0.1:$port/"
  count_instructions "nginx limit_req proxy, 1 worker" "$port" "$pid"
}
count_instructions() { # LABEL PORT PID: instructions per request of the proxy PID on PORT (under callgrind)
  local label=$1 port=$2 pid=$3 out="$WORK/callgrind-$2.out"
  # Warm until every environment has limiter and metrics state, then count from zero.
  KEYS_FILE="$WORK/keys-rotating.txt" wrk -t1 -c8 -d8s -s "$WORK/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  KEYS_FILE="$WORK/keys-rotating.txt" wrk -t1 -c8 -d"$DURATION" -s "$WORK/keys.lua" "http://127.0.0.1:$port/" \
    >"$WORK/wrk-callgrind.txt"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  python3 - "$label" "$WORK/wrk-callgrind.txt" "$out" <<'PY'
import glob, re, sys
label, text = sys.argv[1], open(sys.argv[2]).read()
requests = int(re.search(r"(\d+) requests in", text).group(1))
# The dump after the zeroing is the measured part (the file without a suffix is the whole life's).
dumps = sorted(glob.glob(sys.argv[3] + ".*"), key=lambda name: int(name.rsplit(".", 1)[1]))
summary = re.search(r"^summary: (\d+)", open(dumps[-1]).read(), re.M)
instructions = int(summary.group(1))
print(f"{label}: {instructions / requests:,.0f} instructions per request ({requests:,} requests)")
PY
}
if [[ $BENCH_UPSTREAM == instructions ]]; then
  command -v valgrind >/dev/null || die "valgrind not found: apt-get install -y valgrind"
  UPSTREAM_PORT=$(free_port)
  nginx_conf instructions-upstream \
    "server { listen 127.0.0.1:$UPSTREAM_PORT; location / { default_type application/json; return 200 '[]'; } }"
  wait_http "http://127.0.0.1:$UPSTREAM_PORT/"
  log "user-space instructions per forwarded request (callgrind; $DURATION of wrk -t1 -c8 after 8s of warming)"
  sidecar_instructions "$BIN" "this build ($BIN)"
  [[ -z ${BASELINE_BIN:-} ]] || sidecar_instructions "$BASELINE_BIN" "baseline build ($BASELINE_BIN)"
  # Under valgrind the key's SHA-256 runs without the CPU's SHA instructions: about 7,000 of the sidecar's
  # figures are that, where a native run spends a few hundred. The same for both builds, so they compare.
  log "of which about 7,000 are the key's SHA-256 in software (valgrind hides the CPU's SHA instructions)"
  # The same load through nginx, which checks no key: its limit_req is keyed by the Authorization value.
  nginx_instructions
  exit 0
fi

case $BENCH_UPSTREAM in
  both)
    bench static
    if "$BIN" facts --help >/dev/null 2>&1; then bench facts; else log "no orgkeeper facts in this build: static only"; fi
    ;;
  static | facts) bench "$BENCH_UPSTREAM" ;;
  *) die "BENCH_UPSTREAM is both, static, facts or instructions, not $BENCH_UPSTREAM" ;;
esac

# --- 5. Report ----------------------------------------------------------------------------------------
touch "$WORK/redis.tsv" "$WORK/redis-memory.tsv"
python3 - "$RESULTS" "$MEMORY" "$DURATION" "$CONNECTIONS" "$THREADS" "$(nproc)" "$ROUNDS" \
  "$(cut -d' ' -f1-3 /proc/loadavg)" "$DEFAULT_WORKERS" "$WORK/redis.tsv" "$WORK/redis-memory.tsv" <<'EOF'
import statistics, sys
results, memory, duration, conns, threads, cpus, rounds, load, workers, redis_runs, redis_memory = sys.argv[1:]
runs = {}
for line in open(results):
    group, label, *values = line.rstrip("\n").split("\t")
    runs.setdefault((group, label), []).append([float(v) for v in values])
median = {key: [statistics.median(column) for column in zip(*rows)] for key, rows in runs.items()}
workers_text = "one worker per CPU" if workers == "0" else f"{workers} worker{'s' if workers != '1' else ''}"
print(f"\nSidecar benchmark: wrk -t{threads} -c{conns} -d{duration}, GET /api/facts, loopback, {cpus} CPUs, "
      f"median of {rounds} interleaved rounds (load average at the end: {load}); the sidecar runs {workers_text} "
      "unless the row says otherwise\n")
groups = {}
for line in open(memory):
    group, loaded, after, peak, keys, envs, protocol, description = line.rstrip("\n").split("\t")
    groups[group] = dict(loaded=loaded, after=after, peak=float(peak), keys=keys, envs=envs)
    print(f"Upstream {group}: {description}; the sidecar found it speaks {protocol} and uses that")
print("\n| upstream | run | requests/s (each round) | p50 (ms) | p99 (ms) | non-2xx | socket errors "
      "| server CPU per request (us) | of which user space (us) | upstream CPU per forwarded request (us) |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for (group, label), (rps, p50, p99, non2xx, errors, cpu, user, upstream_cpu) in median.items():
    per_round = ", ".join(f"{int(r[0]):,}" for r in runs[(group, label)])
    forwarded = "" if non2xx > 99 else f"{upstream_cpu:.1f}"
    print(f"| {group} | {label} | {int(rps):,} ({per_round}) | {p50:.2f} | {p99:.2f} | {non2xx:.1f}% "
          f"| {int(errors)} | {cpu:.1f} | {user:.1f} | {forwarded} |")
print()
for group, m in groups.items():
    print(f"Sidecar memory (upstream {group}): {m['loaded']} MiB RSS with {m['keys']} keys of {m['envs']} "
          f"environments loaded; {m['after']} MiB after the runs (peak {m['peak']} MiB)")
print()
for group in groups:
    this, baseline = median.get((group, "sidecar (forwarding)")), median.get((group, "baseline build (BASELINE_BIN), forwarding"))
    if this and baseline:
        # Per round, so that a round's load hits both alike.
        pairs = zip(runs[(group, "sidecar (forwarding)")], runs[(group, "baseline build (BASELINE_BIN), forwarding")])
        faster = sum(1 for a, b in pairs if a[5] < b[5])
        print(f"This build against BASELINE_BIN (upstream {group}): {int(this[0]):,} vs {int(baseline[0]):,} req/s, "
              f"{this[5]:.1f} vs {baseline[5]:.1f} us of CPU per request (user space {this[6]:.1f} vs {baseline[6]:.1f}); "
              f"cheaper in {faster} of {len(runs[(group, 'sidecar (forwarding)')])} rounds")
checks = []
for group in groups:
    def row(label):
        return median.get((group, label))
    side, reject = row("sidecar (forwarding)"), row("sidecar (429 path)")
    nginx, nginx1 = row("nginx limit_req proxy"), row("nginx limit_req proxy, 1 worker")
    one = row("sidecar, 1 worker") or (side if workers == "1" else None)
    checks += [
        (f"{group}: sidecar throughput >= nginx's", side[0] >= nginx[0],
         f"{int(side[0]):,} vs {int(nginx[0]):,} req/s"),
        (f"{group}: sidecar p99 <= nginx's", side[2] <= nginx[2], f"{side[2]:.2f} vs {nginx[2]:.2f} ms"),
        (f"{group}: sidecar CPU per request <= nginx's", side[5] <= nginx[5],
         f"{side[5]:.1f} vs {nginx[5]:.1f} us (user space {side[6]:.1f} vs {nginx[6]:.1f})"),
    ]
    if one:
        checks.append((f"{group}: sidecar with 1 worker >= nginx with 1 worker", one[0] >= nginx1[0],
                       f"{int(one[0]):,} vs {int(nginx1[0]):,} req/s"))
    untracked = row("sidecar, last-use tracking off")
    checks.append((f"{group}: last-use tracking costs <= 2% of forwarding throughput",
                   side[0] >= 0.98 * untracked[0],
                   f"{int(side[0]):,} on vs {int(untracked[0]):,} req/s off ({100 * (side[0] / untracked[0] - 1):+.1f}%)"))
    nginx_reject = row("nginx limit_req proxy (429 path)")
    # wrk against the static upstream with no proxy between bounds any proxy's refusals on the same cores:
    # when that is under 3x the forwarding rate, the target cannot be shown here, whatever a 429 costs.
    ceiling = (f"; wrk with no proxy: {row('upstream direct')[0] / side[0]:.1f}x the sidecar's forwarding"
               if group == "static" else "")
    checks.append((f"{group}: 429 path >= 3x forwarding", reject[0] >= 3 * side[0],
                   f"{reject[0] / side[0]:.1f}x (nginx's own refusal path: {nginx_reject[0] / nginx[0]:.1f}x its "
                   f"forwarding; sidecar's 429s {int(reject[0]):,} vs nginx's {int(nginx_reject[0]):,} req/s"
                   f"{ceiling})"))
redis_commands = {}
for line in open(redis_runs):
    group, commands, seconds = line.split("\t")
    redis_commands.setdefault(group, []).append(int(commands) / float(seconds))
redis_peak = dict(line.rstrip("\n").split("\t") for line in open(redis_memory))
for group in groups:
    side, shared = median.get((group, "sidecar (forwarding)")), median.get((group, "sidecar with Redis (shared limits)"))
    if not shared:
        continue
    per_second = statistics.median(redis_commands[group])
    ratio = per_second / max(shared[0], 1)
    print(f"Sidecar with Redis (upstream {group}): {shared[0] / side[0]:.0%} of the throughput without, p99 "
          f"{shared[2] - side[2]:+.2f} ms; Redis got {per_second:,.0f} commands/s for {shared[0]:,.0f} requests/s "
          f"({ratio:.3f} per request); peak RSS {redis_peak.get(group, '?')} MiB")
    checks += [
        (f"{group}: sidecar with Redis >= 90% of the throughput without", shared[0] >= 0.9 * side[0],
         f"{int(shared[0]):,} vs {int(side[0]):,} req/s"),
        (f"{group}: sidecar with Redis p99 within 1 ms of without", shared[2] - side[2] <= 1.0,
         f"{shared[2]:.2f} vs {side[2]:.2f} ms"),
        (f"{group}: Redis commands/s well under the request rate (< 0.25 per request)", ratio < 0.25,
         f"{per_second:,.0f}/s for {shared[0]:,.0f} req/s"),
    ]
if redis_commands:
    print()
peak = max(m["peak"] for m in groups.values())
checks.append(("sidecar RSS < 50 MiB (10,000 keys, 1,000 environments)", peak < 50, f"peak {peak} MiB"))
for name, ok, detail in checks:
    print(f"{'met   ' if ok else 'MISSED'}  {name}: {detail}")
EOF
