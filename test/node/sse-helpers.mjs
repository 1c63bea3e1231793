// Helpers for sse.test.mjs: a `sluice serve` started with extra flags (helpers.mjs' startServer
// takes none), a loopback HTTP proxy that can cut, hold or batch the SSE stream, and an
// in-memory Storage. The returned server has the shape of helpers.mjs' servers, so that its
// openClient, join, push... work with it.

import {spawn, execFileSync} from "node:child_process"
import {randomBytes} from "node:crypto"
import fs from "node:fs"
import http from "node:http"
import net from "node:net"
import {SLUICE_BIN, WINDOW_MS, SESSION_TIMEOUT_MS, SHORT, TEST_REDIS, serverEnv, sleep} from "./helpers.mjs"

const running = new Set()
process.on("exit", () => {
  // last resort: never leave a server behind the test process
  for(const child of running){ try { child.kill("SIGKILL") } catch { /* gone */ } }
})

async function freePort(){
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.on("error", reject)
    srv.listen(0, "127.0.0.1", () => {
      const {port} = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/**
 * Starts `sluice serve` on a free loopback port with the suite's flags (--longpoll-window 2s
 * --session-timeout 2s, random secret and API key) plus `extraArgs`, e.g.
 * ["--sse-max-lifetime", "1s"], and waits until /healthz answers.
 */
export async function startSluice(extraArgs = []){
  if(!fs.existsSync(SLUICE_BIN)){
    throw new Error(`sluice binary not found at ${SLUICE_BIN}: run \`go build -o bin/sluice ./cmd/sluice\` or set SLUICE_BIN`)
  }
  const secret = randomBytes(32).toString("hex")
  const apiKey = randomBytes(16).toString("hex")
  let lastError
  for(let attempt = 0; attempt < 3; attempt++){
    const port = await freePort()
    const args = ["serve", "--addr", `127.0.0.1:${port}`, "--secret", secret, "--api-key", apiKey,
      "--longpoll-window", `${WINDOW_MS / 1000}s`, "--session-timeout", `${SESSION_TIMEOUT_MS / 1000}s`,
      ...(TEST_REDIS ? ["--redis", TEST_REDIS] : []), ...extraArgs]
    const env = serverEnv({SLUICE_REDIS_PREFIX: `sluicetest:${randomBytes(6).toString("hex")}:`})
    const child = spawn(SLUICE_BIN, args, {stdio: ["ignore", "pipe", "pipe"], env})
    running.add(child)
    let output = ""
    const collect = (chunk) => {
      output = (output + chunk.toString()).slice(-100_000)
      if(process.env.SLUICE_TEST_LOG === "1"){ process.stderr.write(chunk) }
    }
    child.stdout.on("data", collect)
    child.stderr.on("data", collect)
    let exited = null
    const exitPromise = new Promise((resolve) => child.on("exit", (code, signal) => {
      exited = {code, signal}
      running.delete(child)
      resolve(exited)
    }))
    const base = `http://127.0.0.1:${port}`
    const deadline = Date.now() + 10_000
    while(Date.now() < deadline && !exited){
      try {
        const res = await fetch(`${base}/healthz`, {signal: AbortSignal.timeout(1000)})
        await res.arrayBuffer()
        if(res.status === 200){ return makeServer({child, exitPromise, base, secret, apiKey, output: () => output}) }
      } catch { /* not listening yet */ }
      await sleep(50)
    }
    child.kill("SIGKILL")
    await exitPromise
    lastError = new Error(`sluice serve ${extraArgs.join(" ")} did not become healthy (exit ${JSON.stringify(exited)}):\n${output.slice(-4000)}`)
    if(!/address already in use/i.test(output)){ break }
  }
  throw lastError
}

function makeServer({child, exitPromise, base, secret, apiKey, output}){
  const server = {
    base, secret, apiKey, output,
    socketUrl: `${base}/socket`,
    token(userId, name){
      const args = ["token", "--secret", secret, "--user", String(userId)]
      if(name !== undefined){ args.push("--name", name) }
      return execFileSync(SLUICE_BIN, args, {encoding: "utf8", timeout: 10_000}).trim()
    },
    async api(method, apiPath, body){
      const res = await fetch(`${base}${apiPath}`, {
        method,
        headers: {authorization: `Bearer ${apiKey}`, ...(body === undefined ? {} : {"content-type": "application/json"})},
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(SHORT),
      })
      const text = await res.text()
      let json
      try { json = JSON.parse(text) } catch { json = undefined }
      return {status: res.status, body: json, text, headers: res.headers}
    },
    async createRoom(id, spec){
      const res = await server.api("PUT", `/api/salas/${encodeURIComponent(id)}`, spec)
      if(res.status !== 200 && res.status !== 201){ throw new Error(`PUT /api/salas/${id} -> ${res.status} ${res.text}`) }
      return res
    },
    async broadcast(topic, event, payload){
      const res = await server.api("POST", "/api/broadcast", {topic, event, payload})
      if(res.status < 200 || res.status > 299){ throw new Error(`POST /api/broadcast -> ${res.status} ${res.text}`) }
      return res
    },
    async stop(){
      if(child.exitCode !== null || child.signalCode !== null){ return }
      child.kill("SIGTERM")
      const t = setTimeout(() => child.kill("SIGKILL"), 3000)
      await exitPromise
      clearTimeout(t)
    },
  }
  return server
}

const HOP_BY_HOP = ["connection", "keep-alive", "transfer-encoding"]

/**
 * A loopback reverse proxy to `target` (a server's base URL). Every request passes through;
 * the SSE stream (GET /socket/sse answered 200) is treated according to `proxy.mode`, which a
 * test may change at any time:
 *   "pass"  forwarded as it comes;
 *   "cut"   after `cutAfter` message events (unnamed ones), half of what follows is sent and
 *           the connection is destroyed, as a network drop mid-event;
 *   "hold"  headers at once, then nothing until the server ends the response (a buffering proxy);
 *   "batch" forwarded for `passMs`, then held and flushed every `flushMs`;
 *   "block" open streams are destroyed and new ones fail at once (a network outage for SSE).
 * `proxy.stats` counts the streams and the cuts; `proxy.socketUrl` is for phoenix's Socket.
 */
export async function startProxy(target, {mode = "pass", cutAfter = 3, passMs = 1000, flushMs = 1000} = {}){
  const streams = new Set() // {res, up} of the open SSE responses
  const proxy = {mode, cutAfter, passMs, flushMs, stats: {streams: 0, cuts: 0, blocked: 0}}

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, target)
    const isStream = req.method === "GET" && url.pathname === "/socket/sse"
    if(isStream && proxy.mode === "block"){
      proxy.stats.blocked++
      req.socket.destroy()
      return
    }
    const up = http.request(url, {method: req.method, headers: {...req.headers, host: url.host}}, (upRes) => {
      const headers = {...upRes.headers}
      for(const h of HOP_BY_HOP){ delete headers[h] }
      res.writeHead(upRes.statusCode, headers)
      if(!isStream || upRes.statusCode !== 200){
        upRes.pipe(res)
        return
      }
      proxy.stats.streams++
      const stream = {res, up}
      streams.add(stream)
      res.on("close", () => streams.delete(stream))
      relayStream(proxy, upRes, res, up)
    })
    up.on("error", () => res.destroy())
    res.on("close", () => up.destroy())
    req.pipe(up)
  })
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve))
  const base = `http://127.0.0.1:${server.address().port}`
  Object.assign(proxy, {
    base,
    socketUrl: `${base}/socket`,
    /** Switches to "block" and destroys the open streams. */
    block(){
      proxy.mode = "block"
      for(const {res, up} of streams){ res.destroy(); up.destroy() }
    },
    async stop(){
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  })
  return proxy
}

function relayStream(proxy, upRes, res, up){
  const started = Date.now()
  let held = [] // chunks not yet forwarded
  let pending = Buffer.alloc(0) // "cut": bytes after the last complete event
  let messages = 0
  let flushTimer = null
  let cut = false
  const flush = () => { if(held.length > 0){ res.write(Buffer.concat(held)); held = [] } }
  upRes.on("data", (chunk) => {
    if(cut){ return }
    switch(proxy.mode){
      case "hold":
        held.push(chunk)
        break
      case "batch":
        if(Date.now() - started < proxy.passMs){ flush(); res.write(chunk); break }
        held.push(chunk)
        flushTimer ??= setInterval(flush, proxy.flushMs)
        break
      case "cut": {
        pending = Buffer.concat([pending, chunk])
        for(let end; (end = pending.indexOf("\n\n")) !== -1;){
          const event = pending.subarray(0, end + 2)
          pending = pending.subarray(end + 2)
          res.write(event)
          const named = event.toString().split("\n").some((l) => l.startsWith("event:"))
          if(!named && /^(id|data):/m.test(event.toString()) && ++messages >= proxy.cutAfter){
            proxy.stats.cuts++
            // half of the next event (never its closing blank line), then the connection drops
            const end = pending.indexOf("\n\n")
            const next = end !== -1 ? pending.subarray(0, end) : pending.length > 0 ? pending : Buffer.from('id: x\ndata: ["partial')
            cut = true
            res.write(next.subarray(0, Math.ceil(next.length / 2)), () => { res.destroy(); up.destroy() })
            return
          }
        }
        break
      }
      default:
        flush()
        res.write(chunk)
    }
  })
  upRes.on("end", () => {
    clearInterval(flushTimer)
    if(cut){ return }
    flush()
    if(pending.length > 0){ res.write(pending) }
    res.end()
  })
  res.on("close", () => clearInterval(flushTimer))
}

/** A Storage (getItem/setItem/removeItem) in memory, standing in for a tab's sessionStorage. */
export function memoryStorage(){
  const items = new Map()
  return {
    getItem: (k) => items.has(k) ? items.get(k) : null,
    setItem: (k, v) => { items.set(k, String(v)) },
    removeItem: (k) => { items.delete(k) },
  }
}
