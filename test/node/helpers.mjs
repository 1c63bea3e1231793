// Helpers for the phoenix.js compatibility suite: run a real `sluice serve`,
// make tokens, call the HTTP API, and drive unmodified phoenix.js clients
// (LongPoll transport over Node's fetch by default; ws-helpers.mjs switches
// them to WebSocket) with promise-returning helpers.
//
// Environment:
//   SLUICE_BIN        path of the sluice binary (default <repo>/bin/sluice)
//   SLUICE_TEST_LOG=1 copy the server's stdout/stderr to this process's stderr
//   SLUICE_TEST_REDIS a Redis URL: the servers use it (--redis) under a random sluicetest: prefix;
//                     unset, they use the embedded in-memory store
//   SLUICE_LOG_LEVEL  passed to the servers
// No other SLUICE_* variable (nor REDIS_URL) of the person running the tests reaches the servers.

import {spawn, execFileSync} from "node:child_process"
import {randomBytes, randomInt} from "node:crypto"
import fs from "node:fs"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import {fileURLToPath} from "node:url"
import {Socket, LongPoll} from "phoenix"

const here = path.dirname(fileURLToPath(import.meta.url))
export const REPO_ROOT = path.resolve(here, "..", "..")
export const SLUICE_BIN = process.env.SLUICE_BIN || path.join(REPO_ROOT, "bin", "sluice")

// Server flags used by every test file; tests rely on these numbers.
export const WINDOW_MS = 2000
export const SESSION_TIMEOUT_MS = 2000
// Default time a test waits for something that should happen "now".
export const SHORT = 4000

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** The Redis the servers of the single-instance suites use ("": the in-memory store). */
export const TEST_REDIS = process.env.SLUICE_TEST_REDIS || ""

/**
 * The environment of a `sluice` child: this process's, without any SLUICE_* variable (but
 * SLUICE_LOG_LEVEL) or REDIS_URL, so that what the person running the tests exported does not
 * change the servers under test; plus `extra`.
 */
export function serverEnv(extra = {}){
  const env = {}
  for(const [k, v] of Object.entries(process.env)){
    if((k.startsWith("SLUICE_") && k !== "SLUICE_LOG_LEVEL") || k === "REDIS_URL"){ continue }
    env[k] = v
  }
  return {...env, ...extra}
}

// ---------------------------------------------------------------------------------------------
// Unique ids. Every test uses fresh user ids and room ids, so tests in one file (and files run
// against a shared Redis) never see each other's presences or messages in rooms they create.

let idBase = randomInt(1_000_000, 900_000_000)
/** A fresh numeric user id. */
export function newUserId(){ return ++idBase }
/** A fresh room id (letters, digits and dashes). */
export function newRoomId(prefix = "t"){ return `${prefix}-${randomBytes(5).toString("hex")}` }

// ---------------------------------------------------------------------------------------------
// Server process

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

const running = new Set()
function killAll(){
  // last resort: never leave a server running behind the test process
  for(const child of running){ try { child.kill("SIGKILL") } catch { /* already gone */ } }
}
process.on("exit", killAll)
for(const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143], ["SIGHUP", 129]]){
  process.once(signal, () => { killAll(); process.exit(code) })
}

/**
 * Starts `sluice serve` on a free port and waits until GET /healthz answers 200.
 * Returns an object with the URLs, the secret and API key, and helpers bound to this server.
 */
export async function startServer(){
  if(!fs.existsSync(SLUICE_BIN)){
    throw new Error(`sluice binary not found at ${SLUICE_BIN}: run \`go build -o bin/sluice ./cmd/sluice\` or set SLUICE_BIN`)
  }
  const secret = randomBytes(32).toString("hex")
  const apiKey = randomBytes(16).toString("hex")
  const verbose = process.env.SLUICE_TEST_LOG === "1"

  let lastError = null
  for(let attempt = 0; attempt < 3; attempt++){
    const port = await freePort()
    const args = ["serve", "--addr", `127.0.0.1:${port}`, "--secret", secret, "--api-key", apiKey,
      "--longpoll-window", `${WINDOW_MS / 1000}s`, "--session-timeout", `${SESSION_TIMEOUT_MS / 1000}s`]
    if(TEST_REDIS){ args.push("--redis", TEST_REDIS) }
    // With Redis, every server gets its own key prefix: test files never see
    // each other's rooms, history or sessions, and runs never pile up.
    const env = serverEnv({SLUICE_REDIS_PREFIX: `sluicetest:${randomBytes(6).toString("hex")}:`})
    const child = spawn(SLUICE_BIN, args, {stdio: ["ignore", "pipe", "pipe"], env})
    running.add(child)
    let output = ""
    const collect = (chunk) => {
      output += chunk.toString()
      if(output.length > 200_000){ output = output.slice(-100_000) }
      if(verbose){ process.stderr.write(chunk) }
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
    let healthy = false
    while(Date.now() < deadline && !exited){
      try {
        const res = await fetch(`${base}/healthz`, {signal: AbortSignal.timeout(1000)})
        await res.arrayBuffer()
        if(res.status === 200){ healthy = true; break }
      } catch { /* not listening yet */ }
      await sleep(50)
    }
    if(healthy){
      return makeServer({child, exitPromise, port, base, secret, apiKey, output: () => output})
    }
    child.kill("SIGKILL")
    await exitPromise
    lastError = new Error(`sluice serve did not become healthy (exit: ${JSON.stringify(exited)}); output:\n${output.slice(-4000)}`)
    // a port taken between freePort() and the server's listen: try another one
    if(!/address already in use/i.test(output)){ break }
  }
  throw lastError
}

function makeServer({child, exitPromise, port, base, secret, apiKey, output}){
  const server = {
    port, base, secret, apiKey,
    socketUrl: `${base}/socket`,
    longpollUrl: `${base}/socket/longpoll`,
    output,
    /** Signed user token from `sluice token`. */
    token(userId, name){
      const args = ["token", "--secret", secret, "--user", String(userId)]
      if(name !== undefined){ args.push("--name", name) }
      const out = execFileSync(SLUICE_BIN, args, {encoding: "utf8", timeout: 10_000})
      const lines = out.split("\n").filter((l) => l.trim() !== "")
      if(lines.length !== 1){ throw new Error(`sluice token printed ${lines.length} lines: ${JSON.stringify(out)}`) }
      return lines[0].trim()
    },
    /**
     * Calls the HTTP API. `key` defaults to the right API key; pass null for no Authorization header.
     * Resolves {status, body, text, headers}.
     */
    async api(method, apiPath, body, {key = apiKey} = {}){
      const headers = {}
      if(key !== null){ headers.authorization = `Bearer ${key}` }
      if(body !== undefined){ headers["content-type"] = "application/json" }
      const res = await fetch(`${base}${apiPath}`, {
        method, headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(SHORT),
      })
      const text = await res.text()
      let json
      try { json = text === "" ? undefined : JSON.parse(text) } catch { json = undefined }
      return {status: res.status, body: json, text, headers: res.headers}
    },
    /** PUT /api/salas/<id>; throws unless the server answered 200/201. */
    async createRoom(id, spec){
      const res = await server.api("PUT", `/api/salas/${encodeURIComponent(id)}`, spec)
      if(res.status !== 200 && res.status !== 201){
        throw new Error(`PUT /api/salas/${id} ${JSON.stringify(spec)} -> ${res.status} ${res.text}`)
      }
      return res
    },
    async broadcast(topic, event, payload){
      const res = await server.api("POST", "/api/broadcast", {topic, event, payload})
      if(res.status < 200 || res.status > 299){
        throw new Error(`POST /api/broadcast -> ${res.status} ${res.text}`)
      }
      return res
    },
    /** Stops the server; throws if it panicked meanwhile (a crash its clients may have survived by reconnecting). */
    async stop(){
      if(child.exitCode === null && child.signalCode === null){
        child.kill("SIGTERM")
        const t = setTimeout(() => child.kill("SIGKILL"), 3000)
        await exitPromise
        clearTimeout(t)
      }
      const panicked = output().search(/^panic: /m)
      if(panicked >= 0){ throw new Error(`the server panicked:\n${output().slice(panicked, panicked + 3000)}`) }
    },
  }
  return server
}

// ---------------------------------------------------------------------------------------------
// phoenix.js clients

const openClients = new Set()

// The transport openClient gives phoenix.js unless a test passes its own: LongPoll, or WebSocket
// when a ws-*.test.mjs file runs a suite over WebSocket (see ws-helpers.mjs).
let defaultTransport = LongPoll

/** Makes openClient use `transport` (a phoenix.js transport class) by default, for this process. */
export function useTransport(transport){ defaultTransport = transport }

/** Whether openClient's default transport is phoenix.js's LongPoll. */
export function overLongPoll(){ return defaultTransport === LongPoll }

/**
 * Records every event a channel receives (through Channel#onMessage, which sees every
 * message that passed phoenix.js' own join_ref filtering), so tests can wait for events
 * that arrive right after the join and also assert that something was NOT received.
 */
export class Recorder {
  constructor(channel){
    this.channel = channel
    this.events = [] // {event, payload, ref, joinRef, at}
    this.waiters = new Set()
    const previous = channel.onMessage.bind(channel)
    channel.onMessage = (event, payload, ref, joinRef) => {
      const out = previous(event, payload, ref, joinRef)
      this.events.push({event, payload, ref, joinRef, at: Date.now()})
      for(const w of this.waiters){ w() }
      return out
    }
  }

  /** A position in the record; pass it as `since` to only look at later events. */
  mark(){ return this.events.length }

  /** Payloads of `event` received so far (from `since` on). */
  all(event, since = 0){
    return this.events.slice(since).filter((e) => e.event === event).map((e) => e.payload)
  }

  /**
   * Resolves with the first payload of `event` (from `since` on, already received or not) for
   * which `pred(payload)` is true; rejects after `timeout` ms.
   */
  waitFor(event, pred = () => true, {since = 0, timeout = SHORT} = {}){
    const find = () => this.events.slice(since).find((e) => e.event === event && pred(e.payload))
    const found = find()
    if(found){ return Promise.resolve(found.payload) }
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = find()
        if(hit){ cleanup(); resolve(hit.payload) }
      }
      const timer = setTimeout(() => {
        cleanup()
        const seen = this.events.slice(since).filter((e) => e.event === event).map((e) => e.payload)
        reject(new Error(`timeout after ${timeout} ms waiting for "${event}" on ${this.channel.topic}; ` +
          `received ${seen.length} "${event}" event(s): ${JSON.stringify(seen).slice(0, 1500)}`))
      }, timeout)
      const cleanup = () => { clearTimeout(timer); this.waiters.delete(check) }
      this.waiters.add(check)
    })
  }
}

/**
 * Opens a phoenix.js Socket (LongPoll transport, or the one useTransport chose) for a user and
 * waits until it is open (at most `openTimeout` ms). Returns a client: {socket, userId, name, token,
 * channel(topic, params), close()}; `errors` records the socket's errors and `transportCloses` the
 * closes it did not ask for.
 */
export async function openClient(server, {userId = newUserId(), name = `Usuario ${userId}`, token, socketOpts = {}, openTimeout = SHORT} = {}){
  token = token ?? server.token(userId, name)
  const socket = new Socket(server.socketUrl, {
    transport: defaultTransport,
    params: {token},
    timeout: SHORT,
    ...socketOpts,
  })
  const client = {
    socket, userId, name, token,
    key: String(userId),
    channels: [],
    errors: [],
    transportCloses: [],
    /** A channel with a Recorder attached as `channel.rec`. Not joined yet. */
    channel(topic, params = {}){
      const ch = socket.channel(topic, params)
      ch.rec = new Recorder(ch)
      client.channels.push(ch)
      return ch
    },
    /** channel() + join(); resolves {channel, reply}. */
    async join(topic, params = {}, timeout = SHORT){
      const ch = client.channel(topic, params)
      const reply = await join(ch, timeout)
      return {channel: ch, reply}
    },
    close: () => closeClient(client),
  }
  socket.onError((err) => client.errors.push({err, at: Date.now()}))
  // A LongPoll connection that fails reports an error; a WebSocket the server closes, a close.
  socket.onClose((ev) => { if(openClients.has(client)){ client.transportCloses.push({code: ev?.code, reason: ev?.reason, at: Date.now()}) } })
  openClients.add(client)
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`socket for user ${userId} did not open within ${openTimeout} ms`)), openTimeout)
    socket.onOpen(() => { clearTimeout(timer); resolve() })
    socket.connect()
  })
  return client
}

/** Joins a channel. Resolves with the ok response; rejects with JoinError on error or timeout. */
export function join(channel, timeout = SHORT){
  return new Promise((resolve, reject) => {
    channel.join(timeout)
      .receive("ok", (resp) => resolve(resp))
      .receive("error", (resp) => reject(new JoinError("error", resp, channel.topic)))
      .receive("timeout", () => reject(new JoinError("timeout", undefined, channel.topic)))
  })
}

export class JoinError extends Error {
  constructor(status, response, topic){
    super(`join ${topic} -> ${status} ${JSON.stringify(response)}`)
    this.status = status
    this.response = response
  }
}

/**
 * Joins and expects a refusal. Resolves with the error response; rejects if the join succeeds
 * or times out. Leaves the channel afterwards so phoenix.js stops retrying the join.
 */
export async function joinRefused(channel, timeout = SHORT){
  try {
    const ok = await join(channel, timeout)
    throw new Error(`join ${channel.topic} succeeded but should have been refused: ${JSON.stringify(ok)}`)
  } catch(e){
    if(!(e instanceof JoinError)){ throw e }
    if(e.status !== "error"){ throw e }
    channel.leave()
    return e.response
  }
}

/**
 * Pushes an event. Resolves {status: "ok"|"error"|..., response}; rejects on timeout.
 */
export function push(channel, event, payload, timeout = SHORT){
  return new Promise((resolve, reject) => {
    const p = channel.push(event, payload, timeout)
    for(const status of ["ok", "error"]){
      p.receive(status, (response) => resolve({status, response}))
    }
    p.receive("timeout", () => reject(new Error(`push "${event}" on ${channel.topic} got no reply within ${timeout} ms`)))
  })
}

/** Pushes and expects an "ok" reply; resolves with the response. */
export async function pushOk(channel, event, payload, timeout = SHORT){
  const r = await push(channel, event, payload, timeout)
  if(r.status !== "ok"){
    throw new Error(`push "${event}" ${JSON.stringify(payload).slice(0, 200)} on ${channel.topic} -> ${r.status} ${JSON.stringify(r.response)}`)
  }
  return r.response
}

/** Pushes an event the server does not reply to; the push's client-side timeout is ignored. */
export function pushNoReply(channel, event, payload){
  // a short client-side timeout, so that its timer does not keep the test process alive
  channel.push(event, payload, 1000)
}

/** Resolves once `cond()` is true (checked every 20 ms); rejects after `timeout` with `what`. */
export async function until(cond, what, timeout = SHORT){
  const deadline = Date.now() + timeout
  for(;;){
    if(cond()){ return }
    if(Date.now() > deadline){ throw new Error(`timeout after ${timeout} ms waiting for: ${what}`) }
    await sleep(20)
  }
}

// phoenix.js calls globalThis.fetch at request time (Node 20 has no XMLHttpRequest), so a
// wrapper can hold one client's polls, as when a laptop sleeps or a network stalls.
const realFetch = globalThis.fetch
const stalled = new Map() // user token -> Promise released by the test
globalThis.fetch = async (url, opts = {}) => {
  for(const [token, gate] of stalled){
    if(String(url).includes(encodeURIComponent(token))){ await gate }
  }
  return realFetch(url, opts)
}

/**
 * Holds every request the client makes (polls and POSTs) until the returned release()
 * is called. A request already waiting at the server is not affected.
 */
export function stallClient(client){
  let release
  const gate = new Promise((resolve) => { release = resolve })
  stalled.set(client.token, gate)
  return () => { stalled.delete(client.token); release() }
}

/** Waits until the transport has no frame left to send (so the server has them all). */
export async function flushed(socket, timeout = 2000){
  const deadline = Date.now() + timeout
  while(Date.now() < deadline){
    const conn = socket.conn
    if(!conn || (!conn.currentBatch && !conn.awaitingBatchAck && !conn.bufferedAmount && socket.sendBuffer.length === 0)){ return true }
    await sleep(10)
  }
  return false
}

/**
 * Clean teardown: leave every joined channel (so the server untracks presence at once),
 * wait until the leaves were POSTed, then socket.disconnect().
 */
export async function closeClient(client){
  if(!openClients.delete(client)){ return }
  const {socket} = client
  try {
    if(socket.isConnected()){
      for(const ch of client.channels){
        if(ch.isJoined() || ch.isJoining()){ ch.leave() }
      }
      await flushed(socket)
    }
  } finally {
    await new Promise((resolve) => {
      const t = setTimeout(resolve, 500)
      socket.disconnect(() => { clearTimeout(t); resolve() })
    })
  }
}

/** Closes every client opened since the last call (use in afterEach). */
export async function closeAllClients(){
  await Promise.all([...openClients].map((c) => closeClient(c)))
}

/** Creates a member room `sala:<id>` (PUT /api/salas/<id>) for the given clients or user ids. */
export async function memberRoom(server, members, extra = {}){
  const id = newRoomId("sala")
  await server.createRoom(id, {...extra, miembros: members.map((m) => typeof m === "number" ? m : m.userId)})
  return {id, topic: `sala:${id}`}
}

// ---------------------------------------------------------------------------------------------
// Presence helpers

/** {key: [meta, ...]} sorted by phx_ref, from a presence_state-shaped map. */
export function presenceView(state){
  const out = {}
  for(const key of Object.keys(state).sort()){
    out[key] = [...state[key].metas].sort((a, b) => String(a.phx_ref).localeCompare(String(b.phx_ref)))
  }
  return out
}

export const isoUtc = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$/

// ---------------------------------------------------------------------------------------------
// Raw LongPoll HTTP (no phoenix.js)

/**
 * One raw LongPoll request. `tokens` is a list of values for repeated `token` query params,
 * in order. Resolves {status (HTTP), headers, text, body (parsed JSON or undefined), ms}.
 */
export async function lp(server, method, {tokens = [], vsn = "2.0.0", body, contentType, headers = {}, timeout = 8000} = {}){
  const qs = new URLSearchParams()
  for(const t of tokens){ qs.append("token", t) }
  if(vsn !== null){ qs.append("vsn", vsn) }
  const url = `${server.longpollUrl}?${qs}`
  const h = {...headers}
  if(contentType){ h["content-type"] = contentType }
  const started = Date.now()
  const res = await fetch(url, {method, headers: h, body, signal: AbortSignal.timeout(timeout)})
  const text = await res.text()
  let json
  try { json = text === "" ? undefined : JSON.parse(text) } catch { json = undefined }
  return {status: res.status, headers: res.headers, text, body: json, ms: Date.now() - started}
}

/** A V2 frame as a JSON string. */
export const frame = (joinRef, ref, topic, event, payload) => JSON.stringify([joinRef, ref, topic, event, payload])
