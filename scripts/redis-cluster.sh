#!/usr/bin/env bash
# A throwaway three-node Redis Cluster on 127.0.0.1, in memory only (no replicas, no
# persistence), for tests: .ci/run runs the store and broker conformance suites and a
# multi-instance phoenix.js scenario on it.
#
#   url=$(scripts/redis-cluster.sh start "$(mktemp -d)")   # prints the URL for `sluice serve --redis`
#   SLUICE_TEST_REDIS_CLUSTER=$url go test ./gateway/ ./topics/
#   scripts/redis-cluster.sh stop DIR                       # shuts the nodes down, removes DIR
#
# The nodes take the first of the port triples 7001-7003, 7101-7103, ... 7901-7903 whose ports
# and cluster bus ports (port + 10000) are all free. Their config, logs and pid files live in DIR.
set -Eeuo pipefail

usage(){ echo "usage: $0 start DIR | stop DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
dir=$2

# in_use PORT: something accepts connections on 127.0.0.1:PORT.
in_use(){ (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

stop(){
  [ -f "$dir/ports" ] || { rm -rf "$dir"; return 0; }
  local port pid
  for port in $(cat "$dir/ports"); do
    pid=$(cat "$dir/redis-$port.pid" 2>/dev/null || true)
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    if [ -n "$pid" ]; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}

start(){
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    { echo "redis-server and redis-cli are needed (Debian: apt-get install redis-server)" >&2; exit 1; }
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local base="" b p
  for b in 7001 7101 7201 7301 7401 7501 7601 7701 7801 7901; do
    local free=1
    for p in $b $((b + 1)) $((b + 2)) $((b + 10000)) $((b + 10001)) $((b + 10002)); do
      if in_use "$p"; then free=0; break; fi
    done
    if [ "$free" = 1 ]; then base=$b; break; fi
  done
  [ -n "$base" ] || { echo "no free port triple among 7001-7903 (and +10000) for the Redis Cluster" >&2; exit 1; }
  local ports=("$base" "$((base + 1))" "$((base + 2))")
  echo "${ports[*]}" >"$dir/ports"
  trap 'echo "the Redis Cluster did not start; its logs:" >&2; tail -n 20 "$dir"/redis-*.log >&2 || true; stop; exit 1' ERR
  for p in "${ports[@]}"; do
    redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file "$dir/nodes-$p.conf" \
      --save "" --appendonly no --daemonize yes --dir "$dir" --logfile "$dir/redis-$p.log" --pidfile "$dir/redis-$p.pid"
  done
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do [ "$(redis-cli -p "$p" ping 2>/dev/null || true)" = PONG ] && break; sleep 0.1; done
    # the node answering is ours, not another run's that took the port meanwhile
    [ "$(redis-cli -p "$p" config get dir 2>/dev/null | sed -n 2p)" = "$dir" ] ||
      { echo "127.0.0.1:$p does not answer as the node started in $dir" >&2; false; }
  done
  redis-cli --cluster create "${ports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 ||
    { cat "$dir/create.log" >&2; false; }
  for p in "${ports[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' && break; sleep 0.1; done
    redis-cli -p "$p" cluster info | grep -q '^cluster_state:ok' ||
      { echo "node 127.0.0.1:$p: cluster_state is not ok after 10 s" >&2; false; }
  done
  trap - ERR
  echo "redis://127.0.0.1:${ports[0]}?cluster=true&addr=127.0.0.1:${ports[1]}&addr=127.0.0.1:${ports[2]}"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
