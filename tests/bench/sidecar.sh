#!/usr/bin/env bash
# Benchmarks the sidecar on loopback and prints a table. Not a test: it measures, prints, and says which
# targets were met on this run.
#
# In one run, one after the other with the same load (wrk, same connections and duration):
#   1. the upstream direct;
#   2. through the sidecar, keys valid and limits high enough never to reject, rotating over 9,990 keys
#      of 999 environments (so every environment has limiter and metrics state); as started by default
#      (it finds out that orgkeeper facts speaks HTTP/2 and uses it), and forced to HTTP/1.1;
#   3. nginx as a reverse proxy with limit_req keyed by the Authorization header, same keys, same upstream,
#      as configured by default (worker_processes auto: one per CPU) and with one worker like the sidecar's
#      default;
#      and with last-use tracking off (--key-use-flush-interval off), for the cost of tracking;
#   4. the sidecar's rejection path: one key of an environment allowed 1 request a minute (almost all 429).
# Then the sidecar's memory (RSS) holding 10,000 keys of 1,000 environments.
#
# The upstream is `orgkeeper facts` when the binary has it (BENCH_UPSTREAM=facts|static|auto, default
# auto), else nginx answering a fixed JSON body.
#
# Needs: wrk, nginx (apt-get install -y wrk nginx), python3, a release build (built if missing).
# Knobs: DURATION (default 10s), ROUNDS (3), CONNECTIONS (64), THREADS (2), SIDECAR_WORKERS (the sidecar's
# --workers; its default when unset), ORGKEEPER_BIN.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-3}
BENCH_UPSTREAM=${BENCH_UPSTREAM:-auto}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${ORGKEEPER_BIN:-$ROOT/target/release/orgkeeper}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/orgkeeper-bench.XXXXXX")
PIDS=()

log() { echo "bench: $*" >&2; }
die() { log "$*"; exit 1; }

cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
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

# --- 2. The upstream ---------------------------------------------------------------------------------
UP_PORT=$(free_port)
if [[ $BENCH_UPSTREAM == auto ]]; then
  if "$BIN" facts --help >/dev/null 2>&1; then BENCH_UPSTREAM=facts; else BENCH_UPSTREAM=static; fi
fi
nginx_conf() { # NAME BODY [WORKERS]: writes and starts an nginx with that http block
  local conf="$WORK/nginx-$1.conf"
  mkdir -p "$WORK/logs" "$WORK/tmp-$1"
  cat >"$conf" <<EOF
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
  nginx -p "$WORK" -c "$conf"
}
if [[ $BENCH_UPSTREAM == facts ]]; then
  UPSTREAM_DESC="orgkeeper facts (SQLite)"
  "$BIN" facts --listen "127.0.0.1:$UP_PORT" --database-url "$DB" --metrics-addr "127.0.0.1:$(free_port)" \
    2>"$WORK/logs-facts.txt" &
  PIDS=($! "${PIDS[@]}")
else
  UPSTREAM_DESC="nginx answering a fixed JSON body (orgkeeper facts is not in this build)"
  nginx_conf upstream "server { listen 127.0.0.1:$UP_PORT; location / { default_type application/json; return 200 '[]'; } }"
fi
wait_http "http://127.0.0.1:$UP_PORT/api/healthcheck"

# --- 3. The sidecar and nginx's limit_req proxy --------------------------------------------------------
SIDECAR_PORT=$(free_port)
METRICS_PORT=$(free_port)
ORGKEEPER_LOG_LEVEL=info "$BIN" sidecar ${SIDECAR_WORKERS:+--workers "$SIDECAR_WORKERS"} --listen "127.0.0.1:$SIDECAR_PORT" --upstream "http://127.0.0.1:$UP_PORT" \
  --database-url "$DB" --metrics-addr "127.0.0.1:$METRICS_PORT" 2>"$WORK/logs-sidecar.txt" &
SIDECAR_PID=$!
PIDS+=("$SIDECAR_PID")
wait_ready "http://127.0.0.1:$METRICS_PORT"
# The same sidecar forced to HTTP/1.1 to the upstream, for comparison (the default finds out that
# orgkeeper facts speaks HTTP/2 and uses it).
SIDECAR1_PORT=$(free_port)
ORGKEEPER_LOG_LEVEL=warn "$BIN" sidecar ${SIDECAR_WORKERS:+--workers "$SIDECAR_WORKERS"} --upstream-protocol http1 \
  --listen "127.0.0.1:$SIDECAR1_PORT" --upstream "http://127.0.0.1:$UP_PORT" --database-url "$DB" \
  --metrics-addr "127.0.0.1:$(free_port)" 2>"$WORK/logs-sidecar-http1.txt" &
SIDECAR1_PID=$!
PIDS+=("$SIDECAR1_PID")
# The same sidecar with last-use tracking off, for the cost of tracking (same run, on vs off).
SIDECAR_OFF_PORT=$(free_port)
ORGKEEPER_LOG_LEVEL=warn "$BIN" sidecar ${SIDECAR_WORKERS:+--workers "$SIDECAR_WORKERS"} --key-use-flush-interval off \
  --listen "127.0.0.1:$SIDECAR_OFF_PORT" --upstream "http://127.0.0.1:$UP_PORT" --database-url "$DB" \
  --metrics-addr "127.0.0.1:$(free_port)" 2>"$WORK/logs-sidecar-off.txt" &
SIDECAR_OFF_PID=$!
PIDS+=("$SIDECAR_OFF_PID")
rss() { awk -v f="$2" '$1 == f":" {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }
RSS_LOADED=$(rss "$SIDECAR_PID" VmRSS)

nginx_proxy() { # NAME PORT WORKERS
  nginx_conf "$1" "
  upstream facts { server 127.0.0.1:$UP_PORT; keepalive 128; }
  limit_req_zone \$http_authorization zone=keys:32m rate=1000000r/s;
  server {
    listen 127.0.0.1:$2;
    location / {
      limit_req zone=keys burst=1000000 nodelay;
      proxy_pass http://facts;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
    }
  }" "$3"
}
NGINX_PORT=$(free_port)
nginx_proxy proxy "$NGINX_PORT" auto
NGINX1_PORT=$(free_port)
nginx_proxy proxy1 "$NGINX1_PORT" 1
wait_http "http://127.0.0.1:$NGINX1_PORT/"
wait_http "http://127.0.0.1:$NGINX_PORT/"

# --- 4. Load ------------------------------------------------------------------------------------------
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
nginx_workers() { pgrep -P "$(cat "$WORK/nginx-$1.pid")" | tr '\n' ' '; }
run() { # LABEL PORT KEYS_FILE PIDS...: one measured wrk run; PIDS are the processes whose CPU is counted
  # (the upstream's is counted too: how a proxy drives the upstream changes what each request costs there)
  local label=$1 port=$2 keys=$3 out="$WORK/wrk.txt"
  shift 3
  log "$label: $DURATION with $CONNECTIONS connections"
  KEYS_FILE=$keys wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$WORK/keys.lua" "http://127.0.0.1:$port/" >/dev/null
  local before after upstream_before upstream_after
  upstream_before=$(ticks $UPSTREAM_PIDS)
  before=$(ticks "$@")
  KEYS_FILE=$keys wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$WORK/keys.lua" \
    "http://127.0.0.1:$port/" >"$out"
  after=$(ticks "$@")
  upstream_after=$(ticks $UPSTREAM_PIDS)
  python3 - "$label" "$out" "$((after - before))" "$(getconf CLK_TCK)" "$((upstream_after - upstream_before))" \
    >>"$RESULTS" <<'PY'
import re, sys
label, text, ticks, hz = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3]), int(sys.argv[4])
upstream_ticks = int(sys.argv[5])
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
upstream_us = 1e6 * upstream_ticks / hz / max(total - non2xx, 1)
print(f"{label}\t{rps:.0f}\t{p50:.2f}\t{p99:.2f}\t{100.0 * non2xx / max(total, 1):.1f}\t{errors}\t{cpu_us:.1f}"
      f"\t{upstream_us:.1f}")
PY
}
# Rounds interleave the four runs, so that load from other processes on the machine hits them alike; the
# report takes each run's median over the rounds.
UPSTREAM_PIDS=$([[ $BENCH_UPSTREAM == facts ]] && echo "${PIDS[0]}" || nginx_workers upstream)
for round in $(seq 1 "$ROUNDS"); do
  log "round $round of $ROUNDS"
  run "upstream direct" "$UP_PORT" "$WORK/keys-rotating.txt" $UPSTREAM_PIDS
  run "sidecar (forwarding)" "$SIDECAR_PORT" "$WORK/keys-rotating.txt" "$SIDECAR_PID"
  run "sidecar, last-use tracking off" "$SIDECAR_OFF_PORT" "$WORK/keys-rotating.txt" "$SIDECAR_OFF_PID"
  run "sidecar, HTTP/1.1 to the upstream" "$SIDECAR1_PORT" "$WORK/keys-rotating.txt" "$SIDECAR1_PID"
  run "nginx limit_req proxy" "$NGINX_PORT" "$WORK/keys-rotating.txt" $(nginx_workers proxy)
  run "nginx limit_req proxy, 1 worker" "$NGINX1_PORT" "$WORK/keys-rotating.txt" $(nginx_workers proxy1)
  run "sidecar (429 path)" "$SIDECAR_PORT" "$WORK/keys-limited.txt" "$SIDECAR_PID"
done
SIDECAR_PROTOCOL=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/logs-sidecar.txt" | grep -o 'protocol="[^"]*"' | tail -1 | cut -d'"' -f2)
RSS_AFTER=$(rss "$SIDECAR_PID" VmRSS)
RSS_PEAK=$(rss "$SIDECAR_PID" VmHWM)
metric() { python3 -c "import urllib.request,sys; print([l for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith(sys.argv[2] + ' ')][0].split()[1])" "http://127.0.0.1:$METRICS_PORT/metrics" "$1"; }
ENVIRONMENTS=$(metric orgkeeper_sidecar_environments)
KEYS=$(metric orgkeeper_sidecar_keys)

# --- 5. Report ----------------------------------------------------------------------------------------
python3 - "$RESULTS" "$RSS_LOADED" "$RSS_AFTER" "$RSS_PEAK" "$KEYS" "$ENVIRONMENTS" \
  "$UPSTREAM_DESC; the sidecar found it speaks ${SIDECAR_PROTOCOL:-?} and uses that" \
  "$DURATION" "$CONNECTIONS" "$THREADS" "$(nproc)" "$ROUNDS" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'EOF'
import statistics, sys
results, loaded, after, peak, keys, envs, upstream, duration, conns, threads, cpus, rounds, load = sys.argv[1:]
runs = {}
for line in open(results):
    label, *values = line.rstrip("\n").split("\t")
    runs.setdefault(label, []).append([float(v) for v in values])
median = {label: [statistics.median(column) for column in zip(*rows)] for label, rows in runs.items()}
print(f"\nSidecar benchmark: wrk -t{threads} -c{conns} -d{duration}, GET /api/facts, loopback, {cpus} CPUs, "
      f"median of {rounds} interleaved rounds (load average at the end: {load})")
print(f"Upstream: {upstream}\n")
print("| run | requests/s (each round) | p50 (ms) | p99 (ms) | non-2xx | socket errors "
      "| server CPU per request (us) | upstream CPU per forwarded request (us) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for label, (rps, p50, p99, non2xx, errors, cpu, upstream_cpu) in median.items():
    per_round = ", ".join(f"{int(r[0]):,}" for r in runs[label])
    forwarded = "" if non2xx > 99 else f"{upstream_cpu:.1f}"
    print(f"| {label} | {int(rps):,} ({per_round}) | {p50:.2f} | {p99:.2f} | {non2xx:.1f}% | {int(errors)} "
          f"| {cpu:.1f} | {forwarded} |")
print(f"\nSidecar memory: {loaded} MiB RSS with {keys} keys of {envs} environments loaded; "
      f"{after} MiB after the runs (peak {peak} MiB)\n")
side, reject = median["sidecar (forwarding)"], median["sidecar (429 path)"]
untracked = median["sidecar, last-use tracking off"]
nginx, nginx1 = median["nginx limit_req proxy"], median["nginx limit_req proxy, 1 worker"]
checks = [
    ("sidecar throughput >= nginx's", side[0] >= nginx[0], f"{int(side[0]):,} vs {int(nginx[0]):,} req/s"),
    ("sidecar p99 <= nginx's", side[2] <= nginx[2], f"{side[2]:.2f} vs {nginx[2]:.2f} ms"),
    ("sidecar throughput >= nginx's with 1 worker", side[0] >= nginx1[0],
     f"{int(side[0]):,} vs {int(nginx1[0]):,} req/s"),
    ("sidecar p99 <= nginx's with 1 worker", side[2] <= nginx1[2], f"{side[2]:.2f} vs {nginx1[2]:.2f} ms"),
    ("last-use tracking costs <= 2% of forwarding throughput", side[0] >= 0.98 * untracked[0],
     f"{int(side[0]):,} on vs {int(untracked[0]):,} req/s off ({100 * (side[0] / untracked[0] - 1):+.1f}%)"),
    ("429 path >= 3x forwarding", reject[0] >= 3 * side[0], f"{reject[0] / side[0]:.1f}x"),
    ("sidecar RSS < 50 MiB (10,000 keys, 1,000 environments)", float(peak) < 50, f"peak {peak} MiB"),
]
for name, ok, detail in checks:
    print(f"{'met   ' if ok else 'MISSED'}  {name}: {detail}")
EOF
