#!/usr/bin/env bash
# Runs the load scenarios of BENCHMARKS.md on this machine, on loopback only,
# and prints one line per run; each run's full report is kept as JSON.
#
#   scripts/build.sh bin/sluice && scripts/bench.sh [a] [b] [c] [d] [e] [f]   (default: all)
#
# Every run starts fresh servers and stops them; nothing is left running.
# (d) and (e) need Redis at $BENCH_REDIS (default redis://127.0.0.1:6379/0);
# their keys use a prefix of their own and are deleted afterwards.
# Environment: SLUICE_BIN (default bin/sluice), BENCH_OUT (default
# bench-results/<date>), BENCH_DURATION (default 15s), BENCH_RATES (the
# broadcast rates of b and d, default "10 25 50 100 200 400 0"; 0 is as fast
# as possible).
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

BIN=${SLUICE_BIN:-bin/sluice}
OUT=${BENCH_OUT:-bench-results/$(date -u +%Y%m%d-%H%M%S)}
DURATION=${BENCH_DURATION:-15s}
RATES=${BENCH_RATES:-10 25 50 100 200 400 0}
REDIS=${BENCH_REDIS:-redis://127.0.0.1:6379/0}
# The servers and the tool get their settings from flags only: no SLUICE_*
# variable of the person running this changes a run.
for v in $(compgen -e | grep '^SLUICE_' || true); do unset "$v"; done
SECRET=bench-secret-bench-secret-bench-secret
KEY=bench-key
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "no $BIN: run scripts/build.sh $BIN" >&2; exit 1; }

PIDS=()
cleanup(){ for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

# start_server PORT [serve flags...]: starts a server, waits for /healthz.
start_server(){
  local port=$1; shift
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
    console.log([process.argv[2].padEnd(22), `clients ${r.connected}/${r.clients}`, `sent/s ${f(r.sent_per_second, 1)}`,
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

redis_clean(){ redis-cli -u "$REDIS" --scan --pattern "$1*" | xargs -r -n 500 redis-cli -u "$REDIS" del >/dev/null; }

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

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(a b c d e f)
echo "results in $OUT"
for s in "${want[@]}"; do "scenario_$s"; done
echo "summary: $OUT/summary.txt"
