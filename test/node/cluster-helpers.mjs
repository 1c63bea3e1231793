// Helpers for the multi-instance suite (cluster.test.mjs): several `sluice serve` processes
// sharing one Redis behind the round-robin proxy of rrproxy.mjs, a Redis server of the test's own
// on a spare port, a tiny RESP client to clean a test's keys, and a per-client record of every
// LongPoll request phoenix.js makes and what it got back.
//
// It builds on helpers.mjs (its clients, tokens and waiting helpers) without changing it: the
// cluster's `server` object has the fields those helpers use (socketUrl, longpollUrl, token(),
// api(), createRoom(), broadcast()), all pointing at the proxy.
//
// Environment: SLUICE_BIN, SLUICE_TEST_LOG=1 (as helpers.mjs), SLUICE_TEST_REDIS (the shared Redis
// for the main scenarios; default redis://127.0.0.1:6379/0), SLUICE_LOG_LEVEL (passed to the
// servers). No other SLUICE_* variable, nor REDIS_URL, reaches the servers (serverEnv).

import {spawn, execFileSync} from "node:child_process"
import {randomBytes} from "node:crypto"
import fs from "node:fs"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import {SLUICE_BIN, SHORT, serverEnv, sleep} from "./helpers.mjs"
import {startProxy} from "./rrproxy.mjs"

export const CLUSTER_WINDOW_MS = 2000
export const CLUSTER_SESSION_TIMEOUT_MS = 3000
export const MAIN_REDIS_URL = process.env.SLUICE_TEST_REDIS || "redis://127.0.0.1:6379/0"
const verbose = process.env.SLUICE_TEST_LOG === "1"

// ---------------------------------------------------------------------------------------------
// Processes: every child this file starts is killed when the test process exits, however it exits.

const children = new Set()
function killChildren(){
  for(const child of children){ try { child.kill("SIGKILL") } catch { /* gone */ } }
}
process.on("exit", killChildren)
for(const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]){
  process.once(signal, () => { killChildren(); process.exit(code) })
}

function track(child){
  children.add(child)
  const exited = new Promise((resolve) => child.once("exit", (code, signal) => {
    children.delete(child)
    resolve({code, signal})
  }))
  return exited
}

/** A free loopback TCP port. */
export async function freePort(){
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

/** Collects a child's output as timestamped lines, "<iso> [name] line". */
function lineCollector(name){
  const lines = []
  let partial = ""
  const push = (chunk) => {
    const text = partial + chunk.toString()
    const parts = text.split("\n")
    partial = parts.pop()
    const at = new Date().toISOString()
    for(const l of parts){
      const line = `${at} [${name}] ${l}`
      lines.push(line)
      if(verbose){ process.stderr.write(line + "\n") }
    }
    if(lines.length > 50_000){ lines.splice(0, lines.length - 25_000) }
  }
  return {push, lines}
}

// ---------------------------------------------------------------------------------------------
// Sluice instances

/**
 * Starts one `sluice serve` on a free port with the cluster's flags and waits for /healthz.
 * Returns {name, port, base, pid, child, lines, exited, alive(), kill9(), stop()}.
 */
export async function startInstance({name, redisUrl, prefix, secret, apiKey, extraArgs = []}){
  if(!fs.existsSync(SLUICE_BIN)){
    throw new Error(`sluice binary not found at ${SLUICE_BIN}: run \`go build -o bin/sluice ./cmd/sluice\` or set SLUICE_BIN`)
  }
  let lastError
  for(let attempt = 0; attempt < 3; attempt++){
    const port = await freePort()
    const args = ["serve", "--addr", `127.0.0.1:${port}`, "--secret", secret, "--api-key", apiKey,
      "--redis", redisUrl, "--longpoll-window", `${CLUSTER_WINDOW_MS / 1000}s`,
      "--session-timeout", `${CLUSTER_SESSION_TIMEOUT_MS / 1000}s`, "--shutdown-timeout", "2s",
      ...extraArgs] // later flags win: extraArgs may override the defaults above
    const env = serverEnv({SLUICE_REDIS_PREFIX: prefix})
    const child = spawn(SLUICE_BIN, args, {stdio: ["ignore", "pipe", "pipe"], env})
    const exited = track(child)
    const out = lineCollector(name)
    child.stdout.on("data", out.push)
    child.stderr.on("data", out.push)
    let gone = null
    exited.then((e) => { gone = e; out.lines.push(`${new Date().toISOString()} [${name}] <process exited: ${JSON.stringify(e)}>`) })
    const base = `http://127.0.0.1:${port}`
    const deadline = Date.now() + 10_000
    let healthy = false
    while(Date.now() < deadline && !gone){
      try {
        const res = await fetch(`${base}/healthz`, {signal: AbortSignal.timeout(1000)})
        await res.arrayBuffer()
        if(res.status === 200){ healthy = true; break }
      } catch { /* not yet */ }
      await sleep(50)
    }
    const inst = {
      name, port, base, pid: child.pid, child, lines: out.lines, exited,
      alive: () => child.exitCode === null && child.signalCode === null,
      /** kill -9, and wait until the process is gone. */
      async kill9(){
        if(!inst.alive()){ return }
        out.lines.push(`${new Date().toISOString()} [${name}] <test: kill -9 ${child.pid}>`)
        child.kill("SIGKILL")
        await exited
      },
      async stop(){
        if(!inst.alive()){ return }
        child.kill("SIGTERM")
        const t = setTimeout(() => child.kill("SIGKILL"), 4000)
        await exited
        clearTimeout(t)
      },
    }
    if(healthy){ return inst }
    child.kill("SIGKILL")
    await exited
    lastError = new Error(`${name} did not become healthy (exit ${JSON.stringify(gone)}):\n${out.lines.slice(-40).join("\n")}`)
    if(!out.lines.some((l) => /address already in use/i.test(l))){ break }
  }
  throw lastError
}

/**
 * Starts n instances sharing redisUrl and one fresh key prefix, and the round-robin proxy in
 * front of them. `cluster.server` is a helpers.mjs-compatible server object pointing at the proxy.
 */
export async function startCluster({n = 3, redisUrl = MAIN_REDIS_URL, label = "t"} = {}){
  const prefix = `sluicetest:cluster:${label}:${randomBytes(5).toString("hex")}:`
  const secret = randomBytes(32).toString("hex")
  const apiKey = randomBytes(16).toString("hex")
  const instances = []
  try {
    for(let i = 0; i < n; i++){
      instances.push(await startInstance({name: `sluice-${i}`, redisUrl, prefix, secret, apiKey}))
    }
  } catch(e){
    await Promise.all(instances.map((x) => x.stop()))
    throw e
  }
  const proxy = await startProxy(instances.map((x) => x.base))
  const server = makeFacade(proxy.url, secret, apiKey)
  const cluster = {
    instances, proxy, server, prefix, redisUrl, secret, apiKey,
    /** Every instance's log lines, merged in time order. */
    logs(){
      return instances.flatMap((x) => x.lines).sort()
    },
    /** Stops the proxy and every instance still running. */
    async stop(){
      await proxy.close()
      await Promise.all(instances.map((x) => x.stop()))
    },
    /** Deletes every Redis key of this cluster's prefix. */
    async cleanKeys(){
      return deleteKeysWithPrefix(redisUrl, prefix)
    },
  }
  return cluster
}

/** A helpers.mjs-style server object whose URLs are the proxy's. */
function makeFacade(base, secret, apiKey){
  const server = {
    base, secret, apiKey,
    socketUrl: `${base}/socket`,
    longpollUrl: `${base}/socket/longpoll`,
    token(userId, name){
      const args = ["token", "--secret", secret, "--user", String(userId)]
      if(name !== undefined){ args.push("--name", name) }
      const out = execFileSync(SLUICE_BIN, args, {encoding: "utf8", timeout: 10_000})
      const lines = out.split("\n").filter((l) => l.trim() !== "")
      if(lines.length !== 1){ throw new Error(`sluice token printed ${lines.length} lines: ${JSON.stringify(out)}`) }
      return lines[0].trim()
    },
    async api(method, apiPath, body, {key = apiKey, timeout = SHORT} = {}){
      const headers = {}
      if(key !== null){ headers.authorization = `Bearer ${key}` }
      if(body !== undefined){ headers["content-type"] = "application/json" }
      const res = await fetch(`${base}${apiPath}`, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: AbortSignal.timeout(timeout),
      })
      const text = await res.text()
      let json
      try { json = text === "" ? undefined : JSON.parse(text) } catch { json = undefined }
      return {status: res.status, body: json, text, headers: res.headers}
    },
    async createRoom(id, spec){
      const res = await server.api("PUT", `/api/salas/${encodeURIComponent(id)}`, spec)
      if(res.status !== 200 && res.status !== 201){
        throw new Error(`PUT /api/salas/${id} ${JSON.stringify(spec)} -> ${res.status} ${res.text}`)
      }
      return res
    },
    async broadcast(topic, event, payload){
      const res = await server.api("POST", "/api/broadcast", {topic, event, payload})
      if(res.status < 200 || res.status > 299){ throw new Error(`POST /api/broadcast -> ${res.status} ${res.text}`) }
      return res
    },
  }
  return server
}

// ---------------------------------------------------------------------------------------------
// A Redis server of the test's own, on a spare port, in memory only.

/**
 * Starts `redis-server --port <p> --save '' --appendonly no --daemonize no` in a temp dir.
 * Returns {port, url, dir, pid(), stop(signal), start(), close()}; start() restarts it on the same
 * port after stop().
 */
export async function startRedisServer(){
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-redis-"))
  const port = await freePort()
  const url = `redis://127.0.0.1:${port}/0`
  const out = lineCollector(`redis-${port}`)
  let child = null
  let exited = null
  const r = {
    port, url, dir, lines: out.lines,
    pid: () => child?.pid,
    alive: () => !!child && child.exitCode === null && child.signalCode === null,
    async start(){
      if(r.alive()){ return }
      child = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--daemonize", "no", "--dir", dir, "--loglevel", "warning"], {stdio: ["ignore", "pipe", "pipe"], cwd: dir})
      exited = track(child)
      child.stdout.on("data", out.push)
      child.stderr.on("data", out.push)
      child.on("error", (e) => out.push(`spawn error: ${e.message}\n`))
      const deadline = Date.now() + 10_000
      for(;;){
        try {
          const [pong] = await redisCommands(url, [["PING"]], {timeout: 500})
          if(pong === "PONG"){ return }
        } catch { /* not yet */ }
        if(!r.alive() || Date.now() > deadline){
          throw new Error(`redis-server on port ${port} did not start:\n${out.lines.slice(-20).join("\n")}`)
        }
        await sleep(50)
      }
    },
    /** Stops it by signal and waits until the process is gone. */
    async stop(signal = "SIGTERM"){
      if(!r.alive()){ return }
      child.kill(signal)
      const t = setTimeout(() => child.kill("SIGKILL"), 5000)
      await exited
      clearTimeout(t)
    },
    async close(){
      await r.stop("SIGKILL")
      fs.rmSync(dir, {recursive: true, force: true})
    },
  }
  await r.start()
  return r
}

// ---------------------------------------------------------------------------------------------
// A tiny RESP client: enough for PING, SELECT, AUTH, SCAN and UNLINK.

function encodeCommand(args){
  let out = `*${args.length}\r\n`
  for(const a of args){
    const s = String(a)
    out += `$${Buffer.byteLength(s)}\r\n${s}\r\n`
  }
  return out
}

/** Parses one RESP value at buf[pos]; returns [value, nextPos] or null when incomplete. */
function parseReply(buf, pos){
  const eol = buf.indexOf("\r\n", pos)
  if(eol < 0){ return null }
  const type = String.fromCharCode(buf[pos])
  const line = buf.toString("utf8", pos + 1, eol)
  const after = eol + 2
  switch(type){
    case "+": return [line, after]
    case "-": return [new Error(line), after]
    case ":": return [Number(line), after]
    case "$": {
      const len = Number(line)
      if(len < 0){ return [null, after] }
      if(buf.length < after + len + 2){ return null }
      return [buf.toString("utf8", after, after + len), after + len + 2]
    }
    case "*": {
      const len = Number(line)
      if(len < 0){ return [null, after] }
      const items = []
      let p = after
      for(let i = 0; i < len; i++){
        const r = parseReply(buf, p)
        if(!r){ return null }
        items.push(r[0])
        p = r[1]
      }
      return [items, p]
    }
    default: throw new Error(`RESP: unexpected type byte ${JSON.stringify(type)}`)
  }
}

/**
 * Sends commands over one connection (after AUTH/SELECT from the URL) and resolves with their
 * replies, in order; a Redis error reply rejects.
 */
export async function redisCommands(url, commands, {timeout = 3000} = {}){
  const u = new URL(url)
  const pre = []
  if(u.password){ pre.push(u.username ? ["AUTH", decodeURIComponent(u.username), decodeURIComponent(u.password)] : ["AUTH", decodeURIComponent(u.password)]) }
  const db = u.pathname.replace(/^\//, "")
  if(db !== "" && db !== "0"){ pre.push(["SELECT", db]) }
  const all = [...pre, ...commands]
  return new Promise((resolve, reject) => {
    const sock = net.connect({host: u.hostname || "127.0.0.1", port: Number(u.port || 6379)})
    let buf = Buffer.alloc(0)
    const replies = []
    const timer = setTimeout(() => { sock.destroy(); reject(new Error(`redis ${url}: timeout`)) }, timeout)
    sock.on("connect", () => sock.write(all.map(encodeCommand).join("")))
    sock.on("data", (chunk) => {
      buf = Buffer.concat([buf, chunk])
      let pos = 0
      for(;;){
        const r = parseReply(buf, pos)
        if(!r){ break }
        replies.push(r[0])
        pos = r[1]
      }
      buf = buf.subarray(pos)
      if(replies.length >= all.length){
        clearTimeout(timer)
        sock.end()
        const err = replies.find((x) => x instanceof Error)
        if(err){ reject(err) } else { resolve(replies.slice(pre.length)) }
      }
    })
    sock.on("error", (e) => { clearTimeout(timer); reject(e) })
  })
}

/**
 * The servers holding a URL's keys: the one server, or each master of a Redis Cluster (a URL in
 * `sluice serve --redis` form, with cluster=true), whose SCAN only sees its own keys.
 */
export async function redisNodes(url){
  const u = new URL(url)
  if(u.searchParams.get("cluster") !== "true"){ return [url] }
  const seed = new URL(u)
  seed.search = ""
  const [nodes] = await redisCommands(seed.href, [["CLUSTER", "NODES"]])
  const masters = []
  for(const line of nodes.split("\n")){
    const [, addr, flags] = line.split(" ")
    if(!addr || !flags.split(",").includes("master") || flags.includes("fail")){ continue }
    const node = new URL(seed)
    node.host = addr.split("@")[0]
    masters.push(node.href)
  }
  if(masters.length === 0){ throw new Error(`CLUSTER NODES of ${seed.host} lists no master`) }
  return masters
}

/** SCAN MATCH <prefix>* + UNLINK on every node; resolves with the number of keys deleted. */
export async function deleteKeysWithPrefix(url, prefix){
  if(!prefix || prefix.length < 8){ throw new Error(`refusing to delete keys of prefix ${JSON.stringify(prefix)}`) }
  const pattern = prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`) + "*"
  let deleted = 0
  for(const node of await redisNodes(url)){
    let cursor = "0"
    for(let rounds = 0; rounds < 10_000; rounds++){
      const [[next, keys]] = await redisCommands(node, [["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"]])
      if(keys.length > 0){
        // one UNLINK per key: a Cluster refuses keys of several hash slots in one command
        const counts = await redisCommands(node, keys.map((k) => ["UNLINK", k]))
        deleted += counts.reduce((a, b) => a + b, 0)
      }
      cursor = next
      if(cursor === "0"){ break }
    }
  }
  return deleted
}

/** Counts the keys of a prefix (SCAN on every node). */
export async function countKeysWithPrefix(url, prefix){
  return (await countKeysPerNode(url, prefix)).reduce((a, b) => a + b, 0)
}

/** The number of keys of a prefix on each node of redisNodes(url), in that order. */
export async function countKeysPerNode(url, prefix){
  const pattern = prefix.replace(/[*?[\]\\]/g, (c) => `\\${c}`) + "*"
  const out = []
  for(const node of await redisNodes(url)){
    let cursor = "0"
    let n = 0
    for(let rounds = 0; rounds < 10_000; rounds++){
      const [[next, keys]] = await redisCommands(node, [["SCAN", cursor, "MATCH", pattern, "COUNT", "1000"]])
      n += keys.length
      cursor = next
      if(cursor === "0"){ break }
    }
    out.push(n)
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// What each phoenix.js client's LongPoll requests got: a fetch wrapper (over helpers.mjs' one)
// that records, per watched user token, every request and its outcome.

const watched = new Map() // encoded user token -> records
const innerFetch = globalThis.fetch

/** The session id in a LongPoll URL (the last `token` param, "<id><key>.<cursor>"), or null. */
export function sessionOf(url){
  try {
    const tokens = new URL(String(url), "http://x").searchParams.getAll("token")
    if(tokens.length < 2){ return null }
    const t = tokens[tokens.length - 1]
    return t.includes(".") ? t.split(".")[0].slice(0, 32) : null
  } catch { return null }
}

globalThis.fetch = async (url, opts = {}) => {
  let records = null
  const s = String(url)
  if(s.includes("/socket/longpoll")){
    for(const [enc, recs] of watched){
      if(s.includes(enc)){ records = recs; break }
    }
  }
  if(!records){ return innerFetch(url, opts) }
  const rec = {method: opts.method || "GET", session: sessionOf(s), at: Date.now(), end: null,
    http: null, status: null, error: null, text: null, failure: null}
  records.push(rec)
  let res
  try {
    res = await innerFetch(url, opts)
  } catch(e){
    rec.end = Date.now()
    rec.failure = e.name === "AbortError" || e.name === "TimeoutError" ? "aborted" : `fetch failed: ${e.cause?.code || e.message}`
    throw e
  }
  rec.http = res.status
  res.clone().text().then((text) => {
    rec.end = Date.now()
    try {
      const j = JSON.parse(text)
      rec.status = j?.status ?? null
      rec.error = j?.error ?? null
      if(j?.token){ rec.newSession = String(j.token).split(".")[0].slice(0, 32) }
    } catch {
      rec.text = text.slice(0, 120)
    }
  }, (e) => { rec.end = Date.now(); rec.failure = `body: ${e.name}` })
  return res
}

/** Starts recording the LongPoll requests of a helpers.mjs client; returns its records array. */
export function watchClient(client){
  const recs = []
  watched.set(encodeURIComponent(client.token), recs)
  client.requests = recs
  return recs
}

/** Stops recording a client's requests. */
export function unwatchClient(client){
  watched.delete(encodeURIComponent(client.token))
}

/** A record as one short line for reports. */
export function describeRequest(r, t0 = 0){
  const outcome = r.failure ?? (r.http === null ? "(in flight)" : r.text !== null ? `HTTP ${r.http} non-JSON ${JSON.stringify(r.text)}` :
    `HTTP ${r.http} status ${r.status}${r.error ? ` error ${JSON.stringify(r.error)}` : ""}`)
  return `${r.method} sent +${r.at - t0}ms${r.end ? ` ended +${r.end - t0}ms` : ""} session=${r.session ?? "-"} -> ${outcome}`
}

/**
 * The upstream (instance index) of each proxied LongPoll request of a user token, in order:
 * [{session, upstream, method, status, error}], from the proxy's log.
 */
export function routesOf(proxy, userToken){
  const enc = encodeURIComponent(userToken)
  return proxy.log.filter((r) => r.url.includes("/socket/longpoll") && r.url.includes(enc))
    .map((r) => ({session: sessionOf(r.url), upstream: r.upstream, method: r.method, status: r.status, error: r.error, start: r.start}))
}

/** The numbered messages a client received, in order: [{id: "S1:4", stream, n, at}]. */
export function received(c){
  const out = []
  for(const e of c.ch.rec.events){
    let s = null
    if(e.event === "mensaje_recibido"){
      const m = /^seq (\S+) (\d+)$/.exec(e.payload.contenido || "")
      if(m){ s = [m[1], Number(m[2])] }
    } else if(e.event === "anuncio" && e.payload.origen === "api"){
      s = ["api", e.payload.n]
    }
    if(s){ out.push({id: `${s[0]}:${s[1]}`, stream: s[0], n: s[1], at: e.at}) }
  }
  return out
}

/** Real leaves of a client's presence_diffs: refs that left and did not come back as an update. */
export function leavesSeen(c){
  const out = []
  for(const e of c.ch.rec.events){
    if(e.event !== "presence_diff"){ continue }
    for(const [key, {metas}] of Object.entries(e.payload.leaves || {})){
      const prevs = new Set((e.payload.joins?.[key]?.metas || []).map((m) => m.phx_ref_prev).filter(Boolean))
      for(const m of metas){ if(!prevs.has(m.phx_ref)){ out.push({key, ref: m.phx_ref, at: e.at}) } }
    }
  }
  return out
}
