#!/usr/bin/env bash
# Runs the load scenarios of BENCHMARKS.md on this machine, on loopback only,
# and prints one line per run; each run's full report is kept as JSON.
#
#   scripts/build.sh bin/sluice && scripts/bench.sh [a] [b] ... [j]   (default: all)
#
# Scenarios:
#   a  10,000 idle SSE streams (memory store): server RSS per connection.
#   b  one topic, 2,000 and 5,000 SSE subscribers, broadcasts at $BENCH_RATES.
#   c  2,000 long-poll chat clients in 100 rooms, 10% pushing.
#   d  b and c against three instances sharing Redis (direct and via a proxy).
#   e  Redis round trips per operation (Go benchmarks).
#   f  WebSocket next to SSE (idle 10,000; 2,000 subscribers at 10, 100/s, max).
# Side by side with Centrifugo v6 (its uni_sse transport), each run made
# against a fresh Sluice and a fresh Centrifugo one after the other (which
# goes first alternates from pair to pair), both on the same Redis:
#   g  idle SSE streams, 1,000, 10,000 and 20,000 ($BENCH_IDLE_COUNTS) at
#      1,000 connects/s, held $BENCH_IDLE_WINDOW: RSS and CPU per connection,
#      and Redis operations per second while idle.
#   h  connect storm: 10,000 SSE connects at 1,000/s, three times: failures by
#      kind, time to connect all, server CPU per connect, Redis commands per
#      connect (and, Sluice only, the same for 10,000 long-poll first polls).
#   i  fan-out: 2,000 subscribers of one topic at 10 and 100 broadcasts/s,
#      5,000 at 10 and 40/s: latency, CPU per million deliveries.
#   j  without Redis (Sluice's memory store, Centrifugo's memory engine):
#      2,000 subscribers at 10 and 100 broadcasts/s; and 10,000 idle
#      long-poll clients (Sluice) next to 10,000 idle uni_sse streams
#      (Centrifugo has no long-poll transport; its cheapest idle connection).
# g, h, i and j end with a side-by-side table (Sluice, Centrifugo, and their
# ratio) in side-by-side.txt. Centrifugo's configuration is written to
# centrifugo.json in the output folder. Without a Centrifugo binary
# ($CENTRIFUGO_BIN, default ~/go/bin/centrifugo; install it with
# `go install github.com/centrifugal/centrifugo/v6@v6.9.1`), the script
# says so once and runs Sluice alone.
#
# Every run starts fresh servers and stops them; nothing is left running.
# (d) and (e) need Redis at $BENCH_REDIS (default redis://127.0.0.1:6379/0);
# their keys use a prefix of their own and are deleted afterwards. (g), (h)
# and (i) start a private redis-server on 127.0.0.1:$BENCH_PRIVATE_REDIS_PORT
# (default 6391; no persistence; stopped at the end), since Redis counts
# commands Redis-wide (INFO) and the figures must be these servers' alone;
# with BENCH_REDIS set, or without redis-server, they use $BENCH_REDIS.
# Environment: SLUICE_BIN (default bin/sluice), BENCH_OUT (default
# bench-results/<date>), BENCH_DURATION (default 15s), BENCH_RATES (the
# broadcast rates of b and d, default "10 25 50 100 200 400 0"; 0 is as fast
# as possible), CENTRIFUGO_BIN, BENCH_IDLE_COUNTS (default "1000 10000
# 20000"), BENCH_IDLE_WINDOW (default 30s), BENCH_STORM_RUNS (default 3),
# BENCH_CENTRIFUGO_PORT (default 4390; Sluice listens on 4300-4303),
# BENCH_STORM_CLIENTS (default 10000), BENCH_FANOUT_CLIENTS (the two
# subscriber counts of i, default "2000 5000"; j uses the first),
# BENCH_IDLE_LP_CLIENTS (j's idle long-poll clients, default 10000). A small trial of g-j:
#   BENCH_IDLE_COUNTS=300 BENCH_IDLE_WINDOW=10s BENCH_STORM_RUNS=1 BENCH_STORM_CLIENTS=300 \
#   BENCH_FANOUT_CLIENTS="300 400" BENCH_IDLE_LP_CLIENTS=300 BENCH_DURATION=5s scripts/bench.sh g h i j
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SLUICE_BIN:-bin/sluice}
OUT=${BENCH_OUT:-bench-results/$(date -u +%Y%m%d-%H%M%S)}
DURATION=${BENCH_DURATION:-15s}
RATES=${BENCH_RATES:-10 25 50 100 200 400 0}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379/0}
CF_BIN=${CENTRIFUGO_BIN:-$HOME/go/bin/centrifugo}
IDLE_COUNTS=${BENCH_IDLE_COUNTS:-1000 10000 20000}
IDLE_WINDOW=${BENCH_IDLE_WINDOW:-30s}
STORM_RUNS=${BENCH_STORM_RUNS:-3}
STORM_CLIENTS=${BENCH_STORM_CLIENTS:-10000}
IDLE_LP=${BENCH_IDLE_LP_CLIENTS:-10000}
read -r FANOUT_SMALL FANOUT_LARGE <<<"${BENCH_FANOUT_CLIENTS:-2000 5000}"
# The servers and the tool get their settings from flags only: no SLUICE_*
# variable of the person running this changes a run.
for v in $(compgen -e | grep '^SLUICE_' || true); do unset "$v"; done
SECRET=bench-secret-bench-secret-bench-secret
KEY=bench-key
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN: run scripts/build.sh $BIN" >&2; exit 1; }
# Every client and every server connection is a file: use the hard limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PIDS=()
cleanup(){
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

# port_free PORT: fails, saying so, when something already listens on PORT
# (another program's server would answer the health check and be measured).
port_free(){
  if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
    echo "port $1 is already in use on 127.0.0.1: stop what listens there first" >&2
    return 1
  fi
}

# start_server PORT [serve flags...]: starts a server, waits for /healthz.
start_server(){
  local port=$1; shift
  port_free "$port"
  "$BIN" serve --addr "127.0.0.1:$port" --secret "$SECRET" --api-key "$KEY" --open-topics 'bench:*' \
    --log-level warn "$@" >>"$OUT/servers.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "server on $port did not start" >&2; tail -5 "$OUT/servers.log" >&2; return 1
}

# pids: the running servers' pids, comma-separated.
pids(){ local IFS=,; echo "${PIDS[*]}"; }

# run NAME [bench flags...]: one bench run, its JSON kept, one line printed.
run(){
  local name=$1; shift
  echo "+ sluice bench $* --pid $(pids)" >"$OUT/$name.cmd"
  "$BIN" bench --secret "$SECRET" --api-key "$KEY" --pid "$(pids)" --quiet --json "$@" >"$OUT/$name.json" || true
  node -e '
    const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")), s = r.server || {}, l = r.latency_ms || {}
    const kib = (b) => b == null ? "-" : (b / 1024).toFixed(1)
    const f = (x, d = 0) => x == null ? "-" : Number(x).toFixed(d)
    const rc = r.redis_connect, rw = r.redis
    console.log([process.argv[2].padEnd(22), `clients ${r.connected}/${r.clients}`,
      `connect ${f(r.connect_seconds, 1)}s p99 ${f((r.connect_latency_ms || {}).p99, 1)} ms cpu ${f(s.cpu_connect_seconds, 2)}s (${f(s.cpu_ms_per_connect, 2)} ms/conn)`,
      rc ? `redis cmds/connect ${f(rc.per_connect, 2)}` : "", rw ? `redis/s ${f(rw.per_second, 1)}` : "",
      `sent/s ${f(r.sent_per_second, 1)}`,
      `deliv/s ${f(r.delivered_per_second)}`, `rt/s ${f(r.poll_round_trips_per_second)}`,
      `p50 ${f(l.p50, 1)} p90 ${f(l.p90, 1)} p99 ${f(l.p99, 1)} max ${f(l.max, 1)} ms`,
      `missed ${r.missed} dup ${r.duplicated} ooo ${r.out_of_order}`,
      `rss/conn idle ${kib(s.rss_idle_per_connection_bytes)} KiB`, `cpu/M ${f(s.cpu_seconds_per_million_deliveries, 1)} s`,
      `cpu ${f(s.cpu_percent)}%`, r.redis ? `redis cmds/bcast ${f(r.redis.per_broadcast, 1)} /poll ${f(r.redis.per_poll_round_trip, 1)} /delivery ${f(r.redis.per_delivery, 3)}` : "",
      r.ok ? "ok" : "FAILED"].join("  "))
  ' "$OUT/$name.json" "$name" | tee -a "$OUT/summary.txt"
}

# ramp_for N: connect ramp for N clients (about 250 per second).
ramp_for(){ echo "$(( ($1 + 249) / 250 ))s"; }

# redis_clean PREFIX [REDIS URL]: deletes the keys under PREFIX.
redis_clean(){ local u=${2:-$REDIS}; redis-cli -u "$u" --scan --pattern "$1*" | xargs -r -n 500 redis-cli -u "$u" del >/dev/null; }

# --- Centrifugo, side by side ---------------------------------------------
# SIDE_REDIS is the Redis of g, h and i: a private one when possible.
SIDE_REDIS=
REDIS_PID=
side_redis(){
  [ -z "$SIDE_REDIS" ] || return 0
  local port=${BENCH_PRIVATE_REDIS_PORT:-6391}
  if [ -n "${BENCH_REDIS:-}" ] || ! command -v redis-server >/dev/null; then
    SIDE_REDIS=$REDIS
    echo "g, h, i use the Redis at $REDIS: its command counts include whatever else uses it"
    return 0
  fi
  port_free "$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >"$OUT/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && { SIDE_REDIS="redis://127.0.0.1:$port/0"; return 0; }; sleep 0.1; done
  echo "private redis-server on $port did not start" >&2; tail -5 "$OUT/redis.log" >&2; return 1
}
stop_side_redis(){ [ -z "$REDIS_PID" ] || { kill -TERM "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=; }; }
trap 'cleanup; stop_side_redis' EXIT

CF_PORT=${BENCH_CENTRIFUGO_PORT:-4390}
CF_PREFIX="sluicebench-cf-$$"
HAVE_CF=0
if [ -f "$CF_BIN" ] && [ -x "$CF_BIN" ]; then
  HAVE_CF=1
else
  echo "no Centrifugo binary at $CF_BIN (set CENTRIFUGO_BIN, or go install github.com/centrifugal/centrifugo/v6@v6.9.1): the side-by-side scenarios run Sluice alone"
fi

# write_centrifugo_config: Centrifugo v6 with the uni_sse transport, the
# Redis engine on the same Redis as Sluice (its own key prefix), the same
# token secret (HS256) and API key, and bench:* channels any connected user
# may subscribe to from the connect request, as Sluice's --open-topics.
write_centrifugo_config(){
  local engine='{"type": "redis", "redis": {"address": ["'"$SIDE_REDIS"'"], "prefix": "'"$CF_PREFIX"'"}}'
  [ "$CF_ENGINE" = memory ] && engine='{"type": "memory"}'
  cat >"$OUT/$(cf_config_name)" <<JSON
{
  "http_server": {"address": "127.0.0.1", "port": $CF_PORT},
  "log": {"level": "warn"},
  "usage_stats": {"disabled": true},
  "health": {"enabled": true},
  "client": {"token": {"hmac_secret_key": "$SECRET"}},
  "http_api": {"key": "$KEY"},
  "uni_sse": {"enabled": true},
  "engine": $engine,
  "channel": {
    "without_namespace": {"allow_subscribe_for_client": true},
    "namespaces": [{"name": "bench", "allow_subscribe_for_client": true}]
  }
}
JSON
  "$CF_BIN" checkconfig --config "$OUT/$(cf_config_name)" >>"$OUT/centrifugo.log" 2>&1 || {
    echo "centrifugo rejects $OUT/$(cf_config_name):" >&2; tail -5 "$OUT/centrifugo.log" >&2; return 1; }
}
# CF_ENGINE is Centrifugo's engine for the next pairs: redis (g, h, i) or
# memory (j), each with its own configuration file.
CF_ENGINE=redis
cf_config_name(){ if [ "$CF_ENGINE" = memory ]; then echo centrifugo-memory.json; else echo centrifugo.json; fi; }

start_centrifugo(){
  [ -f "$OUT/$(cf_config_name)" ] || write_centrifugo_config
  port_free "$CF_PORT"
  "$CF_BIN" --config "$OUT/$(cf_config_name)" >>"$OUT/centrifugo.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$CF_PORT/health" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "centrifugo did not start" >&2; tail -5 "$OUT/centrifugo.log" >&2; return 1
}

# pair NAME [bench flags...]: the same run against a fresh Sluice on Redis
# and (when installed) a fresh Centrifugo on the same Redis, one after the
# other, which one goes first alternating from pair to pair (so that neither
# always gets the cooler machine); each run's report is NAME.sluice.json and
# NAME.centrifugo.json.
PAIRS=0
pair(){
  local name=$1; shift
  PAIRS=$((PAIRS + 1))
  if [ "$HAVE_CF" = 1 ] && [ $((PAIRS % 2)) = 0 ]; then
    pair_centrifugo "$name" "$@"; pair_sluice "$name" "$@"
  else
    pair_sluice "$name" "$@"; [ "$HAVE_CF" = 1 ] && pair_centrifugo "$name" "$@"
  fi
  return 0
}
# With CF_ENGINE=memory both run without Redis; SLUICE_EXTRA (an array) is
# given to Sluice's run only (j's long-poll clients).
SLUICE_EXTRA=()
pair_sluice(){
  local name=$1; shift
  if [ "$CF_ENGINE" = memory ]; then
    start_server 4300
    run "$name.sluice" --url http://127.0.0.1:4300 "$@" "${SLUICE_EXTRA[@]}"
    cleanup; return 0
  fi
  side_redis
  local prefix="sluicebench:$RANDOM$RANDOM:"
  start_server 4300 --redis "$SIDE_REDIS" --redis-prefix "$prefix"
  run "$name.sluice" --url http://127.0.0.1:4300 --redis "$SIDE_REDIS" "$@" "${SLUICE_EXTRA[@]}"
  cleanup; redis_clean "$prefix" "$SIDE_REDIS"
}
pair_centrifugo(){
  local name=$1; shift
  if [ "$CF_ENGINE" = memory ]; then
    start_centrifugo
    run "$name.centrifugo" --target centrifugo --url "http://127.0.0.1:$CF_PORT" "$@"
    cleanup; return 0
  fi
  side_redis
  start_centrifugo
  run "$name.centrifugo" --target centrifugo --url "http://127.0.0.1:$CF_PORT" --redis "$SIDE_REDIS" "$@"
  cleanup; redis_clean "$CF_PREFIX" "$SIDE_REDIS"
}

# side_by_side PREFIX: a table of the pairs whose names start with PREFIX.
side_by_side(){
  node -e '
    const fs = require("fs"), path = require("path"), [dir, prefix] = process.argv.slice(1)
    const read = (f) => { try { return JSON.parse(fs.readFileSync(path.join(dir, f), "utf8")) } catch { return null } }
    const names = fs.readdirSync(dir).filter((f) => f.startsWith(prefix) && f.endsWith(".sluice.json")).sort()
      .map((f) => f.slice(0, -".sluice.json".length))
    const g = (o, p) => p.split(".").reduce((x, k) => x == null ? null : x[k], o)
    const metrics = {
      idle: [["RSS per connection, KiB", "server.rss_idle_per_connection_bytes", 1 / 1024, 1], ["CPU idle, % of a core", "server.cpu_percent", 1, 1],
        ["Redis ops/s while idle", "redis.per_second", 1, 1], ["CPU per connect, ms", "server.cpu_ms_per_connect", 1, 2], ["failed", "failed", 1, 0]],
      connect: [["failed", "failed", 1, 0], ["time to connect all, s", "connect_seconds", 1, 1], ["connect p99, ms", "connect_latency_ms.p99", 1, 1],
        ["CPU connecting, s", "server.cpu_connect_seconds", 1, 2], ["CPU per connect, ms", "server.cpu_ms_per_connect", 1, 3],
        ["Redis commands per connect", "redis_connect.per_connect", 1, 2]],
      broadcast: [["delivered/s", "delivered_per_second", 1, 0], ["p50, ms", "latency_ms.p50", 1, 1], ["p99, ms", "latency_ms.p99", 1, 1],
        ["max, ms", "latency_ms.max", 1, 1], ["CPU per million deliveries, s", "server.cpu_seconds_per_million_deliveries", 1, 2],
        ["CPU, % of a core", "server.cpu_percent", 1, 0], ["Redis commands per broadcast", "redis.per_broadcast", 1, 2],
        ["missed + dup + out of order", null, 1, 0]],
    }
    const out = []
    for (const n of names) {
      const s = read(n + ".sluice.json"), c = read(n + ".centrifugo.json")
      if (!s) continue
      out.push(`${n}  (sluice ${s.ok ? "ok" : "FAILED"}${c ? ", centrifugo " + (c.ok ? "ok" : "FAILED") : ", no centrifugo run"})`)
      out.push(`  ${"".padEnd(32)}${"Sluice".padStart(12)}${"Centrifugo".padStart(12)}${"S/C".padStart(10)}`)
      for (const [label, p, k, d] of metrics[s.scenario] || []) {
        const v = (r) => r == null ? null : p == null ? r.missed + r.duplicated + r.out_of_order : g(r, p) == null ? null : g(r, p) * k
        const a = v(s), b = v(c)
        const fmt = (x) => x == null ? "-" : x.toFixed(d)
        const r = a != null && b != null && b !== 0 ? a / b : null
        const ratio = r == null ? "-" : r >= 1000 ? r.toExponential(1) : r.toFixed(2)
        out.push(`  ${label.padEnd(32)}${fmt(a).padStart(12)}${fmt(b).padStart(12)}${ratio.padStart(10)}`)
      }
    }
    console.log(out.join("\n"))
  ' "$OUT" "$1" | tee -a "$OUT/side-by-side.txt"
}

scenario_a(){
  start_server 4300
  run a-idle-sse-10000 --scenario idle --url http://127.0.0.1:4300 --clients 10000 --ramp 20s --duration 10s
  cleanup
}

scenario_b(){
  for n in 2000 5000; do
    local rates=$RATES
    [ "$n" = 5000 ] && rates="10 25 40 50 100 0"
    for rate in $rates; do
      start_server 4300
      run "b-sse-$n-rate-$rate" --url http://127.0.0.1:4300 --clients "$n" --ramp "$(ramp_for "$n")" --duration "$DURATION" --rate "$rate" --publishers 8
      cleanup
    done
  done
}

scenario_c(){
  for rate in 200 1000 2000; do
    start_server 4300
    run "c-lp-2000-chat-$rate" --scenario chat --transport longpoll --url http://127.0.0.1:4300 --clients 2000 --topics 100 \
      --push-share 0.1 --rate "$rate" --ramp 8s --duration "$DURATION"
    cleanup
  done
}

# three instances sharing Redis, reached through test/node/rrproxy.mjs
# (round-robin, no stickiness), or directly with the three URLs in turn.
three(){
  local prefix=$1
  for port in 4301 4302 4303; do start_server "$port" --redis "$REDIS" --redis-prefix "$prefix"; done
}
proxy(){
  node -e '
    import("./test/node/rrproxy.mjs").then(async ({startProxy}) => {
      const p = await startProxy(["http://127.0.0.1:4301", "http://127.0.0.1:4302", "http://127.0.0.1:4303"])
      console.log(p.url)
    })' >"$OUT/proxy.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do grep -q '^http' "$OUT/proxy.log" && break; sleep 0.1; done
  PROXY=$(grep -m1 '^http' "$OUT/proxy.log") || { echo "proxy did not start" >&2; cat "$OUT/proxy.log" >&2; return 1; }
}
DIRECT=http://127.0.0.1:4301,http://127.0.0.1:4302,http://127.0.0.1:4303

scenario_d(){
  for rate in 10 25 50 100 200; do
    local prefix="sluicebench:$RANDOM$RANDOM:"
    three "$prefix"
    run "d-sse-2000-rate-$rate-direct" --url "$DIRECT" --clients 2000 --ramp 8s --duration "$DURATION" --rate "$rate" --publishers 8 --redis "$REDIS"
    cleanup; redis_clean "$prefix"
  done
  for rate in 10 40; do
    local prefix="sluicebench:$RANDOM$RANDOM:"
    three "$prefix"
    run "d-sse-5000-rate-$rate-direct" --url "$DIRECT" --clients 5000 --ramp 20s --duration "$DURATION" --rate "$rate" --publishers 8 --redis "$REDIS"
    cleanup; redis_clean "$prefix"
  done
  local prefix="sluicebench:$RANDOM$RANDOM:"
  three "$prefix"; proxy
  run d-sse-2000-rate-25-proxy --url "$PROXY" --clients 2000 --ramp 8s --duration "$DURATION" --rate 25 --publishers 8 --redis "$REDIS"
  cleanup; redis_clean "$prefix"
  for rate in 200 1000; do
    prefix="sluicebench:$RANDOM$RANDOM:"
    three "$prefix"
    run "d-lp-2000-chat-$rate-direct" --scenario chat --transport longpoll --url "$DIRECT" --clients 2000 --topics 100 \
      --push-share 0.1 --rate "$rate" --ramp 8s --duration "$DURATION" --redis "$REDIS"
    cleanup; redis_clean "$prefix"
  done
  prefix="sluicebench:$RANDOM$RANDOM:"
  three "$prefix"; proxy
  run d-lp-2000-chat-200-proxy --scenario chat --transport longpoll --url "$PROXY" --clients 2000 --topics 100 \
    --push-share 0.1 --rate 200 --ramp 8s --duration "$DURATION" --redis "$REDIS"
  cleanup; redis_clean "$prefix"
}

scenario_e(){
  # Round trips and commands per operation, counted by the client (go-redis
  # hooks): see BenchmarkRedis* in gateway/redis_bench_test.go.
  SLUICE_TEST_REDIS=$REDIS go test -run X -bench 'Redis' -benchtime 500x ./gateway/ | tee "$OUT/e-redis-go-bench.txt" | grep Benchmark | tee -a "$OUT/summary.txt"
}

# (f) WebSocket next to SSE, in the same run: 10,000 idle connections of
# each, and one topic with 2,000 subscribers of each at 10 and 100
# broadcasts/s and as fast as possible.
scenario_f(){
  for t in sse websocket; do
    start_server 4300
    run "f-idle-$t-10000" --scenario idle --transport "$t" --url http://127.0.0.1:4300 --clients 10000 --ramp 20s --duration 10s
    cleanup
  done
  for rate in 10 100 0; do
    for t in sse websocket; do
      start_server 4300
      run "f-$t-2000-rate-$rate" --transport "$t" --url http://127.0.0.1:4300 --clients 2000 --ramp 8s --duration "$DURATION" --rate "$rate" --publishers 8
      cleanup
    done
  done
}

# (g) idle streams side by side, with Redis operations per second.
scenario_g(){
  local n need
  for n in $IDLE_COUNTS; do
    need=$((n + 200))
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need" ]; then
      echo "g-idle-sse-$n: skipped: $n streams need an open-file limit of about $need (ulimit -Hn is $(ulimit -Hn))" | tee -a "$OUT/summary.txt"
      continue
    fi
    pair "g-idle-sse-$n" --scenario idle --clients "$n" --connect-rate 1000 --duration "$IDLE_WINDOW"
  done
  side_by_side g-
}

# (h) connect storms side by side: 10,000 SSE connects at 1,000/s, timing
# out at 10 s, $STORM_RUNS times; then Sluice's long-poll first polls.
scenario_h(){
  local k
  for k in $(seq "$STORM_RUNS"); do
    pair "h-connect-sse-$STORM_CLIENTS-run$k" --scenario connect --clients "$STORM_CLIENTS" --connect-rate 1000 --connect-timeout 10s
  done
  pair_sluice "h-connect-lp-$STORM_CLIENTS" --scenario connect --transport longpoll \
    --clients "$STORM_CLIENTS" --connect-rate 1000 --connect-timeout 10s
  side_by_side h-
}

# (i) fan-out side by side: one topic, 2,000 subscribers at 10 and 100
# broadcasts/s, 5,000 at 10 and 40/s.
scenario_i(){
  local rate
  for rate in 10 100; do
    pair "i-sse-$FANOUT_SMALL-rate-$rate" --clients "$FANOUT_SMALL" --connect-rate 500 --duration "$DURATION" --rate "$rate" --publishers 8
  done
  if [ -n "$FANOUT_LARGE" ]; then # BENCH_FANOUT_CLIENTS may name one size only
    for rate in 10 40; do
      pair "i-sse-$FANOUT_LARGE-rate-$rate" --clients "$FANOUT_LARGE" --connect-rate 500 --duration "$DURATION" --rate "$rate" --publishers 8
    done
  fi
  side_by_side i-
}

# (j) without Redis: Sluice's memory store against Centrifugo's memory
# engine; fan-out at 10 and 100/s, and idle long-poll clients against idle
# uni_sse streams.
scenario_j(){
  local rate
  CF_ENGINE=memory
  for rate in 10 100; do
    pair "j-memory-sse-$FANOUT_SMALL-rate-$rate" --clients "$FANOUT_SMALL" --connect-rate 500 --duration "$DURATION" --rate "$rate" --publishers 8
  done
  SLUICE_EXTRA=(--transport longpoll)
  pair "j-memory-idle-longpoll-$IDLE_LP" --scenario idle --clients "$IDLE_LP" --connect-rate 250 --duration "$IDLE_WINDOW"
  SLUICE_EXTRA=()
  CF_ENGINE=redis
  side_by_side j-
}

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(a b c d e f g h i j)
echo "results in $OUT"
for s in "${want[@]}"; do "scenario_$s"; done
echo "summary: $OUT/summary.txt"
