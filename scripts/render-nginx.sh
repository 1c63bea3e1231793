#!/usr/bin/env bash
# Renders deploy/nginx.conf to run it on one machine, without Docker: its upstream servers
# (sluice1:4000, sluice2:4000, sluice3:4000) become the given addresses, in order, and its
# `listen 8080` the given address. Nothing else of the configuration changes but where nginx
# keeps its pid file, logs and temporary files: all in OUT_DIR (Debian's nginx would otherwise
# write under /var and /run). test/node/cluster-nginx.test.mjs runs nginx on it.
#
#   scripts/render-nginx.sh OUT_DIR LISTEN UPSTREAM1 UPSTREAM2 UPSTREAM3
#   scripts/render-nginx.sh /tmp/ngx 127.0.0.1:8080 127.0.0.1:4001 127.0.0.1:4002 127.0.0.1:4003
#   nginx -t -p /tmp/ngx -c /tmp/ngx/nginx.conf                    # check it
#   nginx -p /tmp/ngx -c /tmp/ngx/nginx.conf -g 'daemon off;'      # run it (Ctrl-C stops it)
#
# OUT_DIR/access.log is the configuration's access log: each request's path (never its query
# string, which carries tokens) and upstream.
set -Eeuo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 OUT_DIR LISTEN UPSTREAM... (one host:port per server line of deploy/nginx.conf)" >&2
  exit 2
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${NGINX_CONF:-$root/deploy/nginx.conf}
out=$1
listen=$2
shift 2
for a in "$listen" "$@"; do
  # an address goes into the configuration as it is: allow nothing but host:port
  [[ $a =~ ^[A-Za-z0-9.:_-]+$|^\[[0-9a-fA-F:]+\]:[0-9]+$ ]] || { echo "not a host:port: $a" >&2; exit 2; }
done
mkdir -p "$out"
out=$(cd "$out" && pwd)
# nginx started as root runs its workers as nobody: they must reach the temp directories
chmod 755 "$out"

trap 'rm -f "$out/nginx.conf.tmp"' EXIT
awk -v out="$out" -v listen="$listen" -v ups="$*" '
  BEGIN {
    n = split(ups, up, " ")
    print "# rendered by scripts/render-nginx.sh from deploy/nginx.conf"
    print "pid " out "/nginx.pid;"
    print "error_log " out "/error.log notice;"
  }
  /^[ \t]*server[ \t]+sluice[0-9]+:4000;/ {
    servers++
    if (servers <= n) { sub(/sluice[0-9]+:4000/, up[servers]) }
    print; next
  }
  /^[ \t]*listen[ \t]+8080;/ { listens++; sub(/8080/, listen); print; next }
  /^http[ \t]*\{/ {
    http++
    print
    print "  # added by scripts/render-nginx.sh: files in " out
    print "  client_body_temp_path " out "/client_body;"
    print "  proxy_temp_path " out "/proxy;"
    print "  fastcgi_temp_path " out "/fastcgi;"
    print "  uwsgi_temp_path " out "/uwsgi;"
    print "  scgi_temp_path " out "/scgi;"
    next
  }
  /^[ \t]*access_log[ \t]+\/[^ \t;]+/ { logs++; sub(/access_log[ \t]+\/[^ \t;]+/, "access_log " out "/access.log"); print; next }
  { print }
  END {
    if (http != 1) { print "render-nginx: no `http {` line in the configuration" > "/dev/stderr"; exit 3 }
    if (logs != 1) { print "render-nginx: expected one `access_log /path ...;` line, found " logs + 0 > "/dev/stderr"; exit 3 }
    if (listens != 1) { print "render-nginx: expected one `listen 8080;` line, found " listens + 0 > "/dev/stderr"; exit 3 }
    if (servers != n) {
      print "render-nginx: the configuration has " servers + 0 " `server sluiceN:4000;` lines, " n " upstream(s) given" > "/dev/stderr"
      exit 3
    }
  }
' "$src" >"$out/nginx.conf.tmp"
mv "$out/nginx.conf.tmp" "$out/nginx.conf"
echo "$out/nginx.conf"
