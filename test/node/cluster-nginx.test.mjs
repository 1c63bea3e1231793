// deploy/nginx.conf serving for real. Debian's nginx (/usr/sbin/nginx, or NGINX_BIN) runs the file
// as scripts/render-nginx.sh renders it (the upstream servers pointed at local ports and the
// listen port changed, nothing else; pid, logs and temp files in a temp directory):
//   1. `nginx -t` accepts it. Against three stand-in upstreams (node:http) recording what reaches
//      them: a client's X-Request-ID passes through and a request without one gets nginx's own,
//      requests go round robin, the hop-by-hop Connection header is cleared, and
//      /socket/websocket tunnels a WebSocket upgrade both ways (an Upgrade elsewhere is dropped);
//   2. three sluice instances sharing Redis behind it (REDIS_URL, default
//      redis://127.0.0.1:6379/0; a fresh sluicetest: prefix, deleted at the end): the lobby
//      scenario of lobby-kill.mjs over phoenix.js LongPoll, with a kill -9 of one instance;
//   3. the same over SSE (web/sse-transport.js);
//   4. the same over WebSocket (the npm `ws` as phoenix.js' transport), through the location
//      /socket/websocket: the sockets on the killed instance reconnect elsewhere and rejoin.
// Without nginx the file is skipped, except with CI=true, where it fails (.ci/run installs
// Debian's nginx).

import {test} from "node:test"
import assert from "node:assert/strict"
import {execFileSync, spawn, spawnSync} from "node:child_process"
import fs from "node:fs"
import http from "node:http"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import {REPO_ROOT, SHORT, sleep, until} from "./helpers.mjs"
import {freePort, MAIN_REDIS_URL} from "./cluster-helpers.mjs"
import {startInstances, lobbyKillScenario} from "./lobby-kill.mjs"

const NGINX = process.env.NGINX_BIN || "/usr/sbin/nginx"
const IN_CI = process.env.CI === "true"
const RENDER = path.join(REPO_ROOT, "scripts", "render-nginx.sh")

/** Skips without nginx outside CI; in CI a missing nginx fails. */
function needNginx(t){
  if(fs.existsSync(NGINX)){ return true }
  if(IN_CI){ assert.fail(`CI=true but there is no nginx at ${NGINX}: .ci/run installs Debian's nginx`) }
  t.skip(`no nginx at ${NGINX}: install Debian's nginx (apt-get install nginx) or set NGINX_BIN to run deploy/nginx.conf`)
  return false
}

// ---------------------------------------------------------------------------------------------
// nginx on the rendered deploy/nginx.conf

const running = new Set()
// never leave an nginx behind: SIGTERM makes its master stop its workers too
process.on("exit", () => { for(const child of running){ try { child.kill("SIGTERM") } catch { /* gone */ } } })

function canConnect(port){
  return new Promise((resolve) => {
    const sock = net.connect({host: "127.0.0.1", port})
    sock.once("connect", () => { sock.destroy(); resolve(true) })
    sock.once("error", () => resolve(false))
  })
}

/**
 * Parses deploy/nginx.conf's access log (log_format sluice): one {method, uri, status, rid,
 * attempts: [{addr, status}]} per line; a line it does not know is {line, unknown: true}.
 */
function parseAccessLog(text){
  const out = []
  for(const line of text.split("\n")){
    if(line === ""){ continue }
    const m = /^\S+ \[\S+\] "(\S+) (\S+)" (\d+) \d+ rt=\S+ up="([^"]*)" upstatus="([^"]*)" rid=(\S*)$/.exec(line)
    if(!m){ out.push({line, unknown: true, attempts: []}); continue }
    const addrs = m[4].split(/, | : /)
    const statuses = m[5].split(/, | : /)
    out.push({method: m[1], uri: m[2], status: Number(m[3]), rid: m[6], line,
      attempts: addrs.map((addr, i) => ({addr, status: statuses[i]}))})
  }
  return out
}

/**
 * Renders deploy/nginx.conf for `upstreams` (host:port, one per server line), checks it with
 * `nginx -t` and runs nginx on it in the foreground. Resolves {url, port, dir, access(), errors(),
 * failuresAt(addr), stop()}.
 */
async function startNginx(upstreams){
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-nginx-"))
  let lastError
  for(let attempt = 0; attempt < 3; attempt++){
    const port = await freePort()
    const conf = execFileSync("bash", [RENDER, dir, `127.0.0.1:${port}`, ...upstreams], {encoding: "utf8"}).trim()
    const args = ["-p", `${dir}/`, "-c", conf]
    const check = spawnSync(NGINX, ["-t", ...args], {encoding: "utf8"})
    assert.equal(check.status, 0, `nginx -t on the rendered deploy/nginx.conf failed:\n${check.stderr}`)
    assert.match(check.stderr, /test is successful/)
    const child = spawn(NGINX, [...args, "-g", "daemon off;"], {stdio: ["ignore", "pipe", "pipe"]})
    running.add(child)
    let output = ""
    child.stdout.on("data", (d) => { output += d })
    child.stderr.on("data", (d) => { output += d })
    const exited = new Promise((resolve) => child.once("exit", (code, signal) => { running.delete(child); resolve({code, signal}) }))
    const errors = () => { try { return fs.readFileSync(path.join(dir, "error.log"), "utf8") } catch { return "" } }
    const deadline = Date.now() + 10_000
    let listening = false
    while(!listening && Date.now() < deadline && child.exitCode === null && child.signalCode === null){
      listening = await canConnect(port)
      if(!listening){ await sleep(50) }
    }
    if(listening){
      const ngx = {
        url: `http://127.0.0.1:${port}`, port, dir, conf, child, errors,
        access: () => parseAccessLog(fs.readFileSync(path.join(dir, "access.log"), "utf8")),
        /**
         * Attempts at upstream `addr` that failed (refused, reset, cut), each sent on to the next
         * upstream or answered 502: nginx's error log says so at once (its access log only once
         * the request ends, which for a WebSocket is when it closes).
         */
        failuresAt: (addr) => errors().split("\n").filter((l) => /\[error\]/.test(l) && l.includes(`upstream: "http://${addr}/`)).length,
        async stop(){
          if(child.exitCode === null && child.signalCode === null){
            child.kill("SIGTERM") // fast shutdown: the master stops its workers and exits
            const t = setTimeout(() => child.kill("SIGKILL"), 5000)
            await exited
            clearTimeout(t)
          }
          fs.rmSync(dir, {recursive: true, force: true})
        },
      }
      return ngx
    }
    child.kill("SIGKILL")
    await exited
    lastError = new Error(`nginx did not listen on 127.0.0.1:${port}: ${output}\n${errors().slice(-3000)}`)
    if(!/address already in use/i.test(output + errors())){ break }
  }
  fs.rmSync(dir, {recursive: true, force: true})
  throw lastError
}

// ---------------------------------------------------------------------------------------------
// Stand-in upstreams: record each request's headers; answer an upgrade with 101 and echo bytes.

async function startStandIn(name){
  const seen = []
  const server = http.createServer((req, res) => {
    seen.push({method: req.method, url: req.url, headers: req.headers, upgrade: false})
    req.resume()
    res.writeHead(200, {"content-type": "application/json"})
    res.end(JSON.stringify({upstream: name}))
  })
  const upgraded = new Set() // closeAllConnections() does not know them
  server.on("upgrade", (req, socket, head) => {
    seen.push({method: req.method, url: req.url, headers: req.headers, upgrade: true})
    upgraded.add(socket)
    socket.on("close", () => upgraded.delete(socket))
    socket.on("end", () => socket.end())
    socket.on("error", () => {})
    socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    if(head.length > 0){ socket.write(head) }
    socket.on("data", (d) => socket.write(d))
  })
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    name, seen, addr: `127.0.0.1:${server.address().port}`,
    close: () => new Promise((resolve) => {
      for(const sock of upgraded){ sock.destroy() }
      server.closeAllConnections()
      server.close(() => resolve())
    }),
  }
}

/**
 * A raw HTTP/1.1 upgrade request to nginx: resolves {status, head, echoed}, where echoed is what
 * came back after sending `payload` on the upgraded connection (null when not upgraded).
 */
async function rawUpgrade(port, pathname, payload, extraHeaders = ""){
  const sock = net.connect({host: "127.0.0.1", port})
  sock.on("error", () => {})
  await new Promise((resolve, reject) => { sock.once("connect", resolve); sock.once("error", reject) })
  let buf = Buffer.alloc(0)
  const waitFor = (cond, what) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => { sock.off("data", check); reject(new Error(`timeout waiting for ${what}; got ${JSON.stringify(buf.toString())}`)) }, SHORT)
    function check(d){
      if(d){ buf = Buffer.concat([buf, d]) }
      const r = cond(buf)
      if(r !== null){ clearTimeout(timer); sock.off("data", check); resolve(r) }
    }
    sock.on("data", check)
    check(null)
  })
  try {
    sock.write(`GET ${pathname} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n${extraHeaders}\r\n`)
    const head = await waitFor((b) => { const i = b.indexOf("\r\n\r\n"); return i < 0 ? null : b.subarray(0, i).toString() }, "the answer's head")
    buf = buf.subarray(buf.indexOf("\r\n\r\n") + 4)
    const status = Number(/^HTTP\/1\.1 (\d+)/.exec(head)?.[1])
    if(status !== 101){ return {status, head, echoed: null} }
    buf = Buffer.alloc(0)
    sock.write(payload)
    const echoed = await waitFor((b) => b.length >= Buffer.byteLength(payload) ? b.toString() : null, "the echo")
    return {status, head, echoed}
  } finally {
    sock.destroy()
  }
}

// ---------------------------------------------------------------------------------------------

test("deploy/nginx.conf: nginx -t accepts it; a client's X-Request-ID passes through, nginx makes one otherwise; round robin; Connection cleared; /socket/websocket tunnels an upgrade", {timeout: 30_000}, async (t) => {
  if(!needNginx(t)){ return }
  const ups = [await startStandIn("a"), await startStandIn("b"), await startStandIn("c")]
  const ngx = await startNginx(ups.map((u) => u.addr))
  try {
    const all = () => ups.flatMap((u) => u.seen.map((s) => ({...s, upstream: u.name})))
    const at = (url) => all().filter((s) => s.url === url)

    // a client's X-Request-ID reaches the instance unchanged (it names the same request in both logs)
    const mine = await fetch(`${ngx.url}/api/echo?n=1`, {headers: {"x-request-id": "client-rid-42"}})
    assert.equal(mine.status, 200, await mine.text())
    assert.equal(at("/api/echo?n=1")[0].headers["x-request-id"], "client-rid-42")
    // without one, nginx's own: 32 hex digits, a new one per request
    const generated = []
    for(let i = 0; i < 6; i++){
      const res = await fetch(`${ngx.url}/socket/longpoll?i=${i}`)
      assert.equal(res.status, 200)
      await res.arrayBuffer()
      const [s] = at(`/socket/longpoll?i=${i}`)
      assert.match(s.headers["x-request-id"], /^[0-9a-f]{32}$/)
      generated.push(s.headers["x-request-id"])
      // keep-alive to the upstream: the client's hop-by-hop Connection is not passed on
      assert.equal(s.headers.connection, undefined, JSON.stringify(s.headers))
      assert.equal(s.headers["x-forwarded-for"], "127.0.0.1")
    }
    assert.equal(new Set(generated).size, 6, `request ids repeat: ${generated}`)
    // round robin: every upstream took some of the 7 requests
    const per = ups.map((u) => u.seen.length)
    assert.ok(per.every((n) => n >= 2), `requests per upstream ${JSON.stringify(per)}`)

    // /socket/websocket: the upgrade reaches the instance and the connection carries bytes both ways
    const ws = await rawUpgrade(ngx.port, "/socket/websocket?vsn=2.0.0", "hello through nginx", "X-Request-ID: ws-rid-7\r\n")
    assert.equal(ws.status, 101, ws.head)
    assert.equal(ws.echoed, "hello through nginx")
    const [up] = at("/socket/websocket?vsn=2.0.0")
    assert.equal(up.upgrade, true)
    assert.equal(up.headers.upgrade, "websocket")
    assert.equal(up.headers.connection, "upgrade")
    assert.equal(up.headers["x-request-id"], "ws-rid-7")
    // elsewhere an Upgrade is not passed on: a plain request reaches the instance
    const lp = await rawUpgrade(ngx.port, "/socket/longpoll?upgrade=1", "x")
    assert.equal(lp.status, 200, lp.head)
    const [plain] = at("/socket/longpoll?upgrade=1")
    assert.equal(plain.upgrade, false)
    assert.equal(plain.headers.upgrade, undefined)

    // the access log names each request's upstream and id, never its query string (tokens)
    const log = ngx.access()
    assert.deepEqual(log.filter((r) => r.unknown).map((r) => r.line), [], "access log lines in another format than log_format sluice")
    assert.ok(log.length >= 9, `access log: ${log.length} lines`)
    assert.deepEqual(log.filter((r) => r.line.includes("?")).map((r) => r.line), [], "the access log shows a query string")
    assert.ok(log.some((r) => r.rid === "client-rid-42" && r.uri === "/api/echo" && ups.some((u) => u.addr === r.attempts[0].addr)),
      log.map((r) => r.line).join("\n"))
    console.log(`[nginx headers report] requests per stand-in upstream ${JSON.stringify(per)}; generated X-Request-IDs e.g. ${generated[0]}; ` +
      `upgrade answered ${ws.head.split("\r\n")[0]}; nginx -t ok on ${ngx.conf}`)
  } finally {
    await ngx.stop()
    await Promise.all(ups.map((u) => u.close()))
  }
})

/** Three sluice instances behind nginx on the shared Redis; runs fn(group, ngx), then cleans up. */
async function withNginxCluster(label, fn){
  const group = await startInstances({redisUrl: MAIN_REDIS_URL, label})
  let ngx
  try {
    ngx = await startNginx(group.instances.map((x) => `127.0.0.1:${x.port}`))
    await fn(group, ngx)
  } finally {
    if(ngx){
      const errorLines = ngx.errors().split("\n").filter((l) => /\[(error|crit|alert|emerg)\]/.test(l))
      console.log(`[nginx ${label}] error log: ${errorLines.length} lines, e.g. ${JSON.stringify(errorLines.slice(0, 3).map((l) => l.replace(/^.*?\[/, "[").slice(0, 160)))}`)
      await ngx.stop()
    }
    await group.stop()
    await group.cleanKeys()
  }
}

const front = (group, ngx) => ({url: ngx.url, failuresAt: (i) => ngx.failuresAt(`127.0.0.1:${group.instances[i].port}`)})

test("phoenix.js LongPoll through nginx to three instances, kill -9 of one mid-way: X-Request-ID reaches sluice, every message once and in order, sessions survive", {timeout: 60_000}, async (t) => {
  if(!needNginx(t)){ return }
  await withNginxCluster("nginx-lp", async (group, ngx) => {
    // sluice echoes the X-Request-ID it got: the client's, or nginx's (32 hex; sluice's own has 16)
    const given = await fetch(`${ngx.url}/healthz`, {headers: {"x-request-id": "ci-rid-1"}})
    assert.equal(given.status, 200)
    assert.equal(given.headers.get("x-request-id"), "ci-rid-1")
    const made = await fetch(`${ngx.url}/healthz`)
    assert.match(made.headers.get("x-request-id"), /^[0-9a-f]{32}$/)
    await Promise.all([given.text(), made.text()])

    await lobbyKillScenario({group, front: front(group, ngx), label: "nginx LongPoll kill -9",
      clientSpec: [["L1", "longpoll"], ["L2", "longpoll"], ["L3", "longpoll"], ["L4", "longpoll"], ["S1", "longpoll"], ["S2", "longpoll"]]})
  })
})

test("phoenix.js over SSE (web/sse-transport.js) through nginx to three instances, kill -9 of one mid-way: cut streams resume with Last-Event-ID, every message once and in order, sessions survive", {timeout: 60_000}, async (t) => {
  if(!needNginx(t)){ return }
  await withNginxCluster("nginx-sse", async (group, ngx) => {
    await lobbyKillScenario({group, front: front(group, ngx), label: "nginx SSE kill -9",
      clientSpec: [["L1", "sse"], ["L2", "sse"], ["L3", "sse"], ["L4", "sse"], ["S1", "sse"], ["S2", "sse"]]})
  })
})

test("phoenix.js over WebSocket through nginx's /socket/websocket to three instances, kill -9 of one mid-way: its sockets reconnect elsewhere and rejoin, the others keep theirs, every message once and in order", {timeout: 60_000}, async (t) => {
  if(!needNginx(t)){ return }
  await withNginxCluster("nginx-ws", async (group, ngx) => {
    await lobbyKillScenario({group, front: front(group, ngx), label: "nginx WebSocket kill -9",
      clientSpec: [["L1", "websocket"], ["L2", "websocket"], ["L3", "websocket"], ["L4", "websocket"], ["S1", "websocket"], ["S2", "websocket"]]})
    // nginx logs an upgraded request when its connection ends: every one of them was a 101
    const upgrades = () => ngx.access().filter((r) => r.uri === "/socket/websocket")
    await until(() => upgrades().length >= 6, "nginx logs the 6 WebSocket connections", SHORT).catch(() => {})
    assert.ok(upgrades().length >= 6 && upgrades().every((r) => r.status === 101), `WebSocket requests in nginx's log:\n${upgrades().map((r) => r.line).join("\n")}`)
  })
})
