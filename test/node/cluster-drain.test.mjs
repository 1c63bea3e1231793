// Graceful drain of one instance of a two-instance cluster (one Redis, the round-robin proxy of
// rrproxy.mjs, the instances of cluster-helpers.mjs: --longpoll-window 2s, --session-timeout 3s,
// --shutdown-timeout 2s), with unmodified phoenix.js clients over LongPoll and over Sluice's
// SSETransport (web/sse-transport.js, npm `eventsource`):
//
//   - in sala:lobby, LongPoll L1..L4 and SSE E1..E4 (more SSE clients until both instances hold a
//     stream); numbered messages all the time: /api/broadcast anuncios, and nuevo_mensaje pushed
//     by L1 (LongPoll) and by E1 (SSE);
//   - in a member room where nothing is ever sent, LongPoll Q1 and Q2, whose polls wait their
//     whole window: the drain surely finds waiting polls;
//   - SIGTERM (child.kill) to an instance that holds SSE streams and a waiting quiet poll, while the
//     senders go on. It must exit by itself (code 0) within its --shutdown-timeout without hitting
//     the deadline; polls waiting there answer at once (the quiet ones 204) and phoenix.js polls
//     again on the survivor; its streams end with `retry: 100` and EventSource resumes on the
//     survivor with its Last-Event-ID, same session. Every call (API, pushes) is answered ok, no
//     client loses its session or rejoins (if one does, the requests that made it and the servers'
//     log lines are the evidence), every lobby client gets every numbered message exactly once, in
//     order and in one and the same order, and no presence_diff shows a live client leaving.
//     A client L5 that arrives after the drain connects and joins on the survivor.
//   - /readyz of the draining instance, on a connection it accepted before the SIGTERM (a health
//     checker's), once it logged "draining": if answered, 503 (reported either way).
//   - /metrics of the survivor before and after the traffic: messages in (both transports),
//     broadcasts out (both transports), ok joins of sala:*, delivery latency count, Redis evalsha
//     count and SSE resumes grew; sluice_open_requests is a gauge >= 0; one bad token is one more
//     sluice_requests_refused_total{reason="unauthorized",transport="longpoll"}.
//
// Every request the clients make through the proxy carries an X-Request-ID of the test's, which
// the instances' access logs echo: the logs then say which instance answered what, and a request
// the proxy forwarded without a log line there never reached a handler. On failure, every problem
// is listed with its evidence, and the servers' logs are written to a file in the temp directory.

import {test} from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import http from "node:http"
import net from "node:net"
import os from "node:os"
import path from "node:path"
import {EventSource} from "eventsource"
import {Presence, LongPoll} from "phoenix"
import {SSETransport} from "../../web/sse-transport.js"
import {openClient, closeAllClients, join, push, until, sleep, newUserId, memberRoom, SHORT} from "./helpers.mjs"
import {startCluster, sessionOf, countKeysWithPrefix} from "./cluster-helpers.mjs"

const TOPIC = "sala:lobby"
const SEND_AFTER_TERM_MS = 4000 // how long the senders go on after the SIGTERM
const EXIT_SLACK_MS = 1000 // how much longer than --shutdown-timeout to wait before calling it hung

// ---------------------------------------------------------------------------------------------
// Every request of the test's clients through the proxy: tagged with an X-Request-ID, recorded.

const RID_PREFIX = `drain${process.pid}x`
let ridSeq = 0
let proxyBase = null // set once the cluster runs: only requests to it are tagged
const netLog = [] // {rid, kind, method, url, at, end, http, status, error, session, lastEventId, tail}
const byToken = new Map() // encoded user token -> client
const bySession = new Map() // session id -> client

function kindOf(method, pathname){
  if(pathname.startsWith("/socket/longpoll")){ return "lp" }
  if(pathname.startsWith("/socket/sse")){ return method === "GET" ? "stream" : "post" }
  if(pathname.startsWith("/api/")){ return "api" }
  return "other"
}

function ownerOf(url){
  for(const [enc, c] of byToken){ if(url.includes(enc)){ return c } }
  const sid = new URL(url).searchParams.get("session")
  return sid ? bySession.get(sid) ?? null : null
}

const belowFetch = globalThis.fetch
globalThis.fetch = async (url, opts = {}) => {
  const s = String(url)
  if(proxyBase === null || !s.startsWith(proxyBase)){ return belowFetch(url, opts) }
  const u = new URL(s)
  const method = opts.method || "GET"
  const rid = `${RID_PREFIX}${++ridSeq}`
  const headers = new Headers(opts.headers || {})
  headers.set("x-request-id", rid)
  const kind = kindOf(method, u.pathname)
  const owner = ownerOf(s)
  const rec = {rid, kind, method, url: s, client: owner?.name ?? (kind === "api" ? "api" : null), at: Date.now(), end: null,
    http: null, status: null, error: null, failure: null, session: null, tail: "", bytes: 0,
    // a stream's resume point: the header of an EventSource reconnecting by itself, or the
    // lastEventId the SSE transport puts in the URL of a stream it reopens
    lastEventId: headers.get("last-event-id") ?? u.searchParams.get("lastEventId")}
  if(kind === "lp"){ rec.session = sessionOf(s) }
  if(kind === "post"){ rec.session = headers.get("x-sluice-session")?.slice(0, 32) ?? null }
  netLog.push(rec)
  if(owner){ owner.net.push(rec) }
  let res
  try {
    res = await belowFetch(url, {...opts, headers})
  } catch(e){
    rec.end = Date.now()
    rec.failure = `${e.name}: ${e.cause?.code || e.message}`
    throw e
  }
  rec.http = res.status
  if(kind === "stream" && res.status === 200 && res.body){
    // pass the stream through, keeping its tail and when (and how) it ended
    const dec = new TextDecoder()
    let partial = ""
    const tee = new TransformStream({
      transform(chunk, ctl){
        const text = dec.decode(chunk, {stream: true})
        rec.bytes += chunk.byteLength
        rec.tail = (rec.tail + text).slice(-600)
        const lines = (partial + text).split("\n")
        partial = lines.pop()
        for(const l of lines){ if(l.startsWith("id: ")){ rec.lastId = l.slice(4) } }
        ctl.enqueue(chunk)
      },
      flush(){ rec.end = Date.now(); rec.ended = "clean" },
    })
    const body = res.body.pipeThrough(tee)
    return new Response(body, {status: res.status, statusText: res.statusText, headers: res.headers})
  }
  res.clone().text().then((text) => {
    rec.end = Date.now()
    try {
      const j = JSON.parse(text)
      rec.status = j?.status ?? null
      rec.error = j?.error ?? null
      if(kind === "lp" && typeof j?.token === "string"){ rec.newSession = j.token.split(".")[0].slice(0, 32) }
    } catch {
      rec.text = text.slice(0, 160)
    }
  }, (e) => { rec.end = Date.now(); rec.failure = `body: ${e.name}` })
  return res
}

// ---------------------------------------------------------------------------------------------
// Clients

/** A transport class for one client: SSETransport whose EventSources report to `sse`. */
function sseTransportFor(sse){
  class RecordingEventSource extends EventSource {
    constructor(url, init){
      super(url, init)
      sse.eventSources++
      this.addEventListener("session", (ev) => {
        let data = null
        try { data = JSON.parse(ev.data) } catch { /* reported below */ }
        sse.sessionEvents.push({at: Date.now(), id: ev.lastEventId, data, raw: ev.data})
        sse.lastId = ev.lastEventId
      })
      this.addEventListener("message", (ev) => { if(ev.lastEventId){ sse.lastId = ev.lastEventId } })
      this.addEventListener("unavailable", (ev) => sse.unavailable.push({at: Date.now(), data: ev.data}))
      this.addEventListener("session_gone", (ev) => sse.gone.push({at: Date.now(), data: ev.data}))
    }
  }
  return class extends SSETransport {
    static EventSource = RecordingEventSource
    constructor(...args){
      super(...args)
      sse.transports++
    }
  }
}

/** Opens a phoenix.js client ("lp" or "sse") through the proxy, recorded. */
async function openRecorded(server, name, kind){
  const userId = newUserId()
  const token = server.token(userId, name)
  const holder = {name, kind, net: [], closes: []}
  byToken.set(encodeURIComponent(token), holder)
  let socketOpts = {}
  if(kind === "sse"){
    holder.sse = {eventSources: 0, transports: 0, sessionEvents: [], unavailable: [], gone: [], lastId: null}
    socketOpts = {transport: sseTransportFor(holder.sse)}
  }
  const client = await openClient(server, {userId, name, token, socketOpts})
  Object.assign(client, {kind, net: holder.net, closes: holder.closes, sse: holder.sse, firstConn: client.socket.conn})
  byToken.set(encodeURIComponent(token), client)
  client.socket.onClose((ev) => client.closes.push({at: Date.now(), code: ev?.code, reason: ev?.reason}))
  if(kind === "sse"){
    assert.ok(client.socket.conn instanceof SSETransport, `${name} is not on SSE`)
    client.sessionId = client.socket.conn.sessionId
  } else {
    assert.ok(client.socket.conn instanceof LongPoll, `${name} is not on LongPoll`)
    await until(() => client.net.some((r) => r.newSession), `${name}'s first poll answered`, SHORT)
    client.sessionId = client.net.find((r) => r.newSession).newSession
  }
  bySession.set(client.sessionId, client)
  return client
}

/** Joins `topic` with a Recorder and a phoenix.js Presence; counts ok join replies. */
async function joinTracked(client, topic = TOPIC){
  const ch = client.channel(topic)
  ch.presence = new Presence(ch)
  ch.joinReplies = []
  ch.joinPush.receive("ok", (resp) => ch.joinReplies.push({resp, at: Date.now()}))
  let timer
  const limit = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${client.name}: join ${topic} not answered within ${2 * SHORT} ms (channel ${ch.state})`)), 2 * SHORT)
  })
  try { await Promise.race([join(ch), limit]) } finally { clearTimeout(timer) }
  client.ch = ch
  return ch
}

/** Real leaves in a presence_diff: refs that left and did not come back as a phx_ref_prev update. */
function realLeaves(diff){
  const out = []
  for(const [key, {metas}] of Object.entries(diff.leaves || {})){
    const prevs = new Set((diff.joins?.[key]?.metas || []).map((m) => m.phx_ref_prev).filter(Boolean))
    for(const m of metas){ if(!prevs.has(m.phx_ref)){ out.push({key, ref: m.phx_ref}) } }
  }
  return out
}
const leavesSeen = (ch) => ch.rec.events.filter((e) => e.event === "presence_diff")
  .flatMap((e) => realLeaves(e.payload).map((l) => ({...l, at: e.at})))

/** The numbered messages a channel received, in order: {id: "api:3", stream, n, at}. */
function received(ch){
  const out = []
  for(const e of ch.rec.events){
    let s = null
    if(e.event === "mensaje_recibido"){
      const m = /^seq (\S+) (\d+)$/.exec(e.payload.contenido || "")
      if(m){ s = [m[1], Number(m[2])] }
    } else if(e.event === "anuncio" && e.payload?.origen === "api"){
      s = ["api", e.payload.n]
    }
    if(s){ out.push({id: `${s[0]}:${s[1]}`, stream: s[0], n: s[1], at: e.at}) }
  }
  return out
}

/** What is wrong with a list of numbers that should be exactly from..to: missing, repeated, reordered. */
function sequenceProblems(ns, from, to){
  const problems = []
  const count = new Map()
  for(const n of ns){ count.set(n, (count.get(n) || 0) + 1) }
  const missing = []
  for(let n = from; n <= to; n++){ if(!count.has(n)){ missing.push(n) } }
  const dups = [...count].filter(([, k]) => k > 1).map(([n, k]) => `${n}x${k}`)
  const extra = ns.filter((n) => n < from || n > to)
  const backwards = []
  for(let i = 1; i < ns.length; i++){ if(ns[i] <= ns[i - 1]){ backwards.push(`${ns[i - 1]}->${ns[i]}`) } }
  if(missing.length){ problems.push(`missing ${missing.join(",")}`) }
  if(dups.length){ problems.push(`duplicated ${dups.join(",")}`) }
  if(extra.length){ problems.push(`unexpected ${extra.join(",")}`) }
  if(backwards.length){ problems.push(`out of order ${backwards.slice(0, 10).join(" ")}`) }
  return problems
}

// ---------------------------------------------------------------------------------------------
// Servers: logs, metrics

/** request_id -> {instance, line, method, path, status, duration, session} from the access logs. */
function accessLog(cluster){
  const out = new Map()
  for(const [i, inst] of cluster.instances.entries()){
    for(const line of inst.lines){
      const rid = /\brequest_id=(\S+)/.exec(line)?.[1]
      if(!rid || !rid.startsWith(RID_PREFIX)){ continue }
      const f = (k) => new RegExp(`\\b${k}=(\\S+)`).exec(line)?.[1] ?? null
      out.set(rid, {instance: i, line, method: f("method"), path: f("path"), status: Number(f("status")), duration: f("duration"), session: f("session")})
    }
  }
  return out
}

/** Parses the Prometheus text format: [{name, labels, value}]. */
function parseMetrics(text){
  const out = []
  for(const line of text.split("\n")){
    if(line === "" || line.startsWith("#")){ continue }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line)
    if(!m){ continue }
    const labels = {}
    for(const [, k, v] of (m[2] || "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)){ labels[k] = v }
    out.push({name: m[1], labels, value: Number(m[3])})
  }
  return out
}

/** The sum of a metric over the series whose labels include `labels` (0 if none); null if absent when `strict`. */
function metric(samples, name, labels = {}, {strict = false} = {}){
  const hits = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
  if(hits.length === 0){ return strict ? null : 0 }
  return hits.reduce((a, s) => a + s.value, 0)
}

async function scrape(inst){
  const res = await fetch(`${inst.base}/metrics`, {signal: AbortSignal.timeout(SHORT)})
  const text = await res.text()
  assert.equal(res.status, 200, `${inst.name} /metrics -> ${res.status} ${text.slice(0, 200)}`)
  return parseMetrics(text)
}

/** One request with a fresh connection (as a health checker), resolving {status, text} or {error}. */
function freshGet(url, timeout = 1000){
  return new Promise((resolve) => {
    const req = http.get(url, {agent: false, timeout}, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (d) => { text += d })
      res.on("end", () => resolve({status: res.statusCode, text}))
      res.on("error", (e) => resolve({error: e.code || e.message}))
    })
    req.on("timeout", () => req.destroy(new Error("timeout")))
    req.on("error", (e) => resolve({error: e.code || e.message}))
  })
}

/** A TCP connection opened (and accepted) before the SIGTERM, that sends GET /readyz when told. */
async function preConnectedReadyz(port){
  const sock = net.connect({host: "127.0.0.1", port})
  await new Promise((resolve, reject) => { sock.once("connect", resolve); sock.once("error", reject) })
  let text = ""
  const done = new Promise((resolve) => {
    sock.setEncoding("utf8")
    sock.on("data", (d) => { text += d })
    sock.on("close", () => resolve(text))
    sock.on("error", () => {})
  })
  return {
    async ask(){
      sock.write("GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
      const t = await Promise.race([done, sleep(2000).then(() => { sock.destroy(); return text })])
      const m = /^HTTP\/1\.1 (\d+)/.exec(t)
      return {status: m ? Number(m[1]) : null, body: t.split("\r\n\r\n").slice(1).join("").trim(), raw: t.slice(0, 300)}
    },
    close(){ sock.destroy() },
  }
}

// ---------------------------------------------------------------------------------------------

test("SIGTERM one of two instances while LongPoll and SSE clients receive numbered messages: it drains and exits by itself, nobody rejoins, every message exactly once and in order, no presence leave; /metrics counters move", {timeout: 55_000}, async () => {
  const cluster = await startCluster({n: 2, label: "drain"})
  proxyBase = cluster.proxy.url
  const t0 = Date.now()
  const s = cluster.server
  const p = cluster.proxy
  const logFile = path.join(os.tmpdir(), `sluice-cluster-drain-${process.pid}-${t0}.log`)
  const clients = []
  const report = []
  const problems = [] // everything that went wrong, each with its evidence
  let victim = null
  let termAt = null
  let stop = false // the senders
  const rel = (t) => (t === null || t === undefined ? "-" : `+${t - t0}ms`)
  const check = (ok, msg) => { if(!ok){ problems.push(typeof msg === "function" ? msg() : msg) } return ok }

  /**
   * The instance that answered a recorded request: its access log line (written when the request
   * ended), else the proxy's record of the same request (a stream still open, a request that failed).
   */
  const instanceOf = (r, acc = accessLog(cluster)) => {
    const a = acc.get(r.rid)
    if(a){ return a.instance }
    const u = new URL(r.url)
    const target = u.pathname + u.search
    let best = null
    for(const e of p.log){
      if(e.method !== r.method || e.url !== target || e.upstream === null || e.start < r.at - 5 || e.start > r.at + 500){ continue }
      if(!best || e.start < best.start){ best = e }
    }
    return best ? best.upstream : null
  }
  const nameOf = (i) => (i === null || i === undefined ? "?" : cluster.instances[i].name)
  /** One recorded request as a line of evidence: what, when, who answered, what came back. */
  const describe = (r, acc = accessLog(cluster)) => {
    const a = acc.get(r.rid)
    const outcome = r.failure ?? `HTTP ${r.http}${r.status !== null ? ` status ${r.status}` : ""}${r.error ? ` error ${JSON.stringify(r.error)}` : ""}${r.text ? ` body ${JSON.stringify(r.text)}` : ""}`
    return `${r.rid} ${r.client ?? "?"} ${r.kind} ${r.method} sent ${rel(r.at)} ended ${rel(r.end)} -> ${outcome}; ` +
      `${a ? `${nameOf(a.instance)} logged ${a.method} ${a.path} ${a.status} in ${a.duration}` : `routed to ${nameOf(instanceOf(r, acc))} by the proxy, NO access log line there${r.http === 502 ? proxyTiming(r) : ""}`}` +
      `${r.lastEventId ? `; Last-Event-ID ${r.lastEventId}` : ""}`
  }
  /** When the victim logged "draining", by its own clock (same machine), or null. */
  const drainingAt = () => {
    if(victim === null){ return null }
    const l = cluster.instances[victim].lines.find((x) => /msg=draining/.test(x))
    const t = l && /\btime=(\S+)/.exec(l)?.[1]
    return t ? Date.parse(t) : null
  }
  /** For a request the proxy sent to the victim: when it reached the proxy and failed, against the drain. */
  const proxyTiming = (r) => {
    const u = new URL(r.url)
    const e = p.log.find((x) => x.method === r.method && x.url === u.pathname + u.search && x.start >= r.at - 5 && x.start <= r.at + 500)
    const d = drainingAt()
    if(!e || d === null){ return "" }
    const when = (t) => (t >= d ? `${t - d} ms after` : `${d - t} ms before`)
    return `; the proxy got it ${when(e.start)} ${nameOf(victim)} logged "draining" (the SIGTERM was sent ${when(termAt)}), ` +
      `forwarded it to ${nameOf(e.upstream)}, and the connection failed ${e.end === null ? "-" : when(e.end)}: ${e.error ?? `status ${e.status}`}`
  }
  const failedRequest = (r) => r.failure || r.text || (r.http !== null && r.http !== 200) ||
    (r.kind === "lp" && r.status !== null && ![200, 204].includes(r.status) && !(r.status === 410 && r.session === null)) ||
    ((r.kind === "post" || r.kind === "api") && r.status !== null && r.status !== 200 && r.http !== 200)

  const diagnostics = () => {
    const out = []
    const acc = accessLog(cluster)
    out.push(`proxy ${p.url} -> ${cluster.instances.map((x) => `${x.name}=${x.base} pid ${x.pid}${x.alive() ? "" : " (exited)"}`).join(", ")}; ` +
      `victim ${nameOf(victim)}, SIGTERM ${rel(termAt)}`)
    out.push(`proxy counts ${JSON.stringify(p.counts)} refused ${JSON.stringify(p.refused)} failed(502) ${JSON.stringify(p.failed)}`)
    const proxyFailures = p.log.filter((r) => r.error || r.status === 502)
    for(const r of proxyFailures.slice(0, 10)){
      out.push(`  proxy: ${r.method} ${r.url.slice(0, 60)} -> upstream ${nameOf(r.upstream)} status ${r.status} error ${JSON.stringify(r.error)} start ${rel(r.start)} end ${rel(r.end)}`)
    }
    for(const c of clients){
      out.push(`client ${c.name} (${c.kind}, user ${c.userId}, session ${c.sessionId}) errors ${JSON.stringify(c.errors.map((e) => [String(e.err), rel(e.at)]))} ` +
        `closes ${JSON.stringify(c.closes.map((e) => [e.code, e.reason, rel(e.at)]))}` +
        (c.sse ? ` transports ${c.sse.transports} eventSources ${c.sse.eventSources} sessions ${JSON.stringify(c.sse.sessionEvents.map((e) => [e.data?.session, e.data?.resumed, rel(e.at)]))} unavailable ${c.sse.unavailable.length} gone ${c.sse.gone.length}` : ""))
      const bad = c.net.filter(failedRequest)
      for(const r of [...bad.slice(0, 4), ...c.net.slice(-2)]){ out.push(`    ${describe(r, acc)}`) }
    }
    const logs = cluster.logs()
    const notable = logs.filter((l) => /level=(WARN|ERROR)|panic|msg=draining|msg=stopped|shutdown|<test|<process/.test(l))
    out.push(`server logs (all of them in ${logFile}): ${logs.length} lines; WARN/ERROR/drain lines (first 40):`, ...notable.slice(0, 40))
    return out.join("\n").slice(0, 40_000)
  }

  try {
    // ---- metrics before any client
    const before = await Promise.all(cluster.instances.map((x) => scrape(x)))

    // ---- clients. In sala:lobby: LongPoll L1..L4, SSE E1..E4 (more SSE clients until both
    // instances hold a stream). In a member room where nothing is ever sent: LongPoll Q1, Q2,
    // whose polls wait their whole window, so that the drain surely finds waiting polls.
    const openStreams = () => {
      const per = cluster.instances.map(() => [])
      for(const r of p.log){
        if(r.method === "GET" && r.url.startsWith("/socket/sse") && r.end === null && r.upstream !== null){
          per[r.upstream].push(ownerOf(`${p.url}${r.url}`)?.name ?? "?")
        }
      }
      return per
    }
    for(const name of ["L1", "L2", "L3", "L4"]){ clients.push(await openRecorded(s, name, "lp")) }
    for(const name of ["E1", "E2", "E3", "E4"]){ clients.push(await openRecorded(s, name, "sse")) }
    for(let k = 5; openStreams().some((x) => x.length === 0); k++){
      assert.ok(k <= 10, `SSE streams did not spread over both instances: ${JSON.stringify(openStreams())}`)
      clients.push(await openRecorded(s, `E${k}`, "sse"))
    }
    const lobby = [...clients]
    const quiet = [await openRecorded(s, "Q1", "lp"), await openRecorded(s, "Q2", "lp")]
    clients.push(...quiet)
    const room = await memberRoom(s, quiet)
    for(const c of lobby){ await joinTracked(c) }
    for(const c of quiet){ await joinTracked(c, room.topic) }
    const converge = async (group) => {
      const keys = group.map((c) => c.key).sort()
      for(const c of group){
        await until(() => JSON.stringify(c.ch.presence.list((k) => k).sort()) === JSON.stringify(keys) &&
          c.ch.presence.list((k, pr) => pr.metas.length).every((n) => n === 1),
        `${c.name}'s Presence lists the ${keys.length} users of ${c.ch.topic}, one meta each (has ${JSON.stringify(c.ch.presence.list((k, pr) => [k, pr.metas.length]))})`, SHORT)
      }
    }
    await converge(lobby)
    await converge(quiet)
    const firstRef = Object.fromEntries(clients.map((c) => [c.key, c.ch.presence.state[c.key].metas.map((m) => m.phx_ref)]))
    const byName = Object.fromEntries(clients.map((c) => [c.name, c]))
    const lpClients = clients.filter((c) => c.kind === "lp")
    const sseClients = clients.filter((c) => c.kind === "sse")
    report.push(`${lobby.filter((c) => c.kind === "lp").length} LongPoll + ${sseClients.length} SSE clients in ${TOPIC}, 2 quiet LongPoll clients in ${room.topic}, joined by ${rel(Date.now())}; SSE streams per instance ${JSON.stringify(openStreams())}`)

    // ---- numbered messages, all the time: API broadcasts, L1's pushes (LongPoll), E1's pushes (SSE)
    const sent = {api: [], L1: [], E1: []} // {n, start, end, ok, outcome}
    const pushSender = async (name) => {
      const ch = byName[name].ch
      for(let n = 1; !stop; n++){
        const rec = {n, start: Date.now(), end: null, ok: false, outcome: null}
        sent[name].push(rec)
        try {
          const r = await push(ch, "nuevo_mensaje", {contenido: `seq ${name} ${n}`}, SHORT)
          rec.ok = r.status === "ok"
          rec.outcome = `${r.status} ${JSON.stringify(r.response)}`
        } catch(e){ rec.outcome = e.message }
        rec.end = Date.now()
        await sleep(40)
      }
    }
    const apiSender = async () => {
      for(let n = 1; !stop; n++){
        const rec = {n, start: Date.now(), end: null, ok: false, outcome: null}
        sent.api.push(rec)
        try {
          const r = await s.api("POST", "/api/broadcast", {topic: TOPIC, event: "anuncio", payload: {origen: "api", n}})
          rec.ok = r.status === 200
          rec.outcome = `HTTP ${r.status} ${r.text.slice(0, 100)}`
        } catch(e){ rec.outcome = e.message }
        rec.end = Date.now()
        await sleep(40)
      }
    }
    const senders = [apiSender(), pushSender("L1"), pushSender("E1")]
    await sleep(2000)

    // ---- the victim, while the senders go on: an instance holding SSE streams where a quiet
    // client's poll waits (started 300 to 1500 ms ago: it has most of its window left)
    const quietTokens = quiet.map((c) => encodeURIComponent(c.token))
    const quietWaiting = () => cluster.instances.map((x, i) => p.log.filter((r) => r.upstream === i && r.end === null && r.method === "GET" &&
      r.url.startsWith("/socket/longpoll") && quietTokens.some((t) => r.url.includes(t)) &&
      Date.now() - r.start >= 300 && Date.now() - r.start <= 1500).length)
    await until(() => quietWaiting().some((n, i) => n >= 1 && openStreams()[i].length >= 1), "a quiet poll waiting at an instance holding SSE streams", SHORT)
    const streamsAtTerm = openStreams()
    victim = quietWaiting().findIndex((n, i) => n >= 1 && streamsAtTerm[i].length >= 1)
    const survivor = 1 - victim
    const V = cluster.instances[victim]
    const S = cluster.instances[survivor]
    assert.ok(streamsAtTerm[survivor].length >= 1, `the survivor holds no SSE stream: ${JSON.stringify(streamsAtTerm)}`)
    const shutdownArg = V.child.spawnargs[V.child.spawnargs.indexOf("--shutdown-timeout") + 1]
    const shutdownMs = Number(/^(\d+)s$/.exec(shutdownArg)?.[1]) * 1000
    assert.ok(shutdownMs > 0, `cannot read --shutdown-timeout from ${JSON.stringify(V.child.spawnargs)}`)
    const midVictim = await scrape(V) // the victim's gauges just before
    const pre = await preConnectedReadyz(V.port) // a health checker's connection, accepted before the SIGTERM
    // a health checker with a fresh connection each time, from just before the SIGTERM until refused
    const freshReadyz = []
    let probing = true
    const prober = (async () => {
      while(probing){
        const r = await freshGet(`${V.base}/readyz`, 1000)
        freshReadyz.push({...r, at: Date.now()})
        if(r.error === "ECONNREFUSED"){ return }
        await sleep(2)
      }
    })()
    await sleep(20)
    try { await until(() => quietWaiting()[victim] >= 1, `a quiet poll waiting at ${V.name}`, SHORT) } catch { /* checked below */ }
    const quietAtTerm = quietWaiting()
    const inflightAtTerm = [...p.inflight]

    termAt = Date.now()
    V.lines.push(`${new Date().toISOString()} [${V.name}] <test: SIGTERM ${V.pid}>`)
    V.child.kill("SIGTERM")
    // /readyz on the connection accepted before the SIGTERM, once the instance says it is draining
    let drainingSeenAt = null
    try {
      await until(() => V.lines.some((l) => /msg=draining/.test(l)) || !V.alive(), `${V.name} logs "draining"`, 2000)
      drainingSeenAt = Date.now()
    } catch { /* checked below */ }
    const readyzPre = await pre.ask()
    pre.close()
    let exitedAt = null
    const exit = await Promise.race([V.exited.then((x) => { exitedAt = Date.now(); return x }), sleep(shutdownMs + EXIT_SLACK_MS).then(() => null)])
    const exitMs = exitedAt === null ? null : exitedAt - termAt
    probing = false
    await prober

    // the process exits by itself, within its --shutdown-timeout, having drained
    assert.ok(exit !== null, `${V.name} did not exit within --shutdown-timeout ${shutdownArg} + ${EXIT_SLACK_MS} ms after SIGTERM`)
    assert.deepEqual(exit, {code: 0, signal: null}, `${V.name} exit`)
    assert.ok(exitMs <= shutdownMs, `${V.name} exited ${exitMs} ms after SIGTERM, over its --shutdown-timeout ${shutdownArg}`)
    const vlog = V.lines.filter((l) => Date.parse(l.slice(0, 24)) >= termAt - 5)
    check(vlog.some((l) => /msg=draining/.test(l)), `${V.name} did not log "draining"`)
    check(vlog.some((l) => /msg=stopped/.test(l)), `${V.name} did not log "stopped"`)
    check(!vlog.some((l) => /shutdown deadline passed/.test(l)), `${V.name} hit its shutdown deadline: requests were still open after ${shutdownArg}`)
    report.push(`SIGTERM ${V.name} at ${rel(termAt)}, senders running, requests in flight per instance ${JSON.stringify(inflightAtTerm)}, quiet polls waiting ${JSON.stringify(quietAtTerm)}, SSE streams ${JSON.stringify(streamsAtTerm)}; ` +
      `it logged "draining" ${drainingSeenAt === null ? "?" : drainingSeenAt - termAt} ms later and exited ${JSON.stringify(exit)} ${exitMs} ms after the SIGTERM (--shutdown-timeout ${shutdownArg})`)
    // /readyz while draining (optional: answered, it must be 503)
    if(readyzPre.status !== null){
      check(readyzPre.status === 503 && /draining/.test(readyzPre.body), `${V.name} /readyz after it logged "draining" answered ${JSON.stringify(readyzPre)}`)
    }
    const freshCounts = {}
    for(const r of freshReadyz){ const k = r.status ?? r.error; freshCounts[k] = (freshCounts[k] || 0) + 1 }
    report.push(`/readyz of ${V.name} while draining: GET sent on a connection it had accepted before the SIGTERM, once it had logged "draining" -> ` +
      `${readyzPre.status === null ? `connection closed with NO HTTP answer (${JSON.stringify(readyzPre.raw)})` : `${readyzPre.status} ${JSON.stringify(readyzPre.body)}`}; ` +
      `fresh connections every ~2 ms from 20 ms before the SIGTERM until refused: ${JSON.stringify(freshCounts)}`)

    // ---- a client that arrives after the drain: it connects and joins on the survivor
    const late = await openRecorded(s, "L5", "lp")
    clients.push(late)
    await joinTracked(late)
    const lateJoinedAt = late.ch.joinReplies[0].at

    // Send for a while after the SIGTERM, and until every stream has sent enough after it to
    // judge the drain: a count, not a time window, so that a loaded machine only takes longer.
    const sendUntil = Math.max(termAt + SEND_AFTER_TERM_MS, lateJoinedAt + 1500)
    const enoughAfterTerm = () => Object.values(sent).every((recs) => recs.filter((r) => r.start > termAt).length >= 10)
    const giveUpAt = sendUntil + 60000
    while(Date.now() < sendUntil || (!enoughAfterTerm() && Date.now() < giveUpAt)){ await sleep(50) }
    stop = true
    await Promise.all(senders)
    const stopAt = Date.now()
    const last = Object.fromEntries(Object.entries(sent).map(([k, v]) => [k, v.length]))
    const lobbyNow = [...lobby, late]

    // ---- everyone gets the last message of every stream (bounded), then room for duplicates
    const complete = (c) => {
      const got = new Set(received(c.ch).map((m) => m.id))
      return Object.entries(last).every(([k, n]) => got.has(`${k}:${n}`))
    }
    try { await until(() => lobbyNow.every(complete), "every lobby client receives the last message of every stream", 3 * SHORT) } catch { /* below */ }
    await sleep(500)
    const acc = accessLog(cluster)

    // ---- 1. every call was answered ok: a graceful drain loses none
    for(const [stream, recs] of Object.entries(sent)){
      for(const r of recs.filter((x) => !x.ok)){
        const who = stream === "api" ? "api" : stream
        // its POSTs (not polls or streams) that failed while the call was pending
        const reqs = netLog.filter((q) => q.client === who && q.method === "POST" && q.at >= r.start - 5 && q.at <= (r.end ?? Date.now()) && failedRequest(q))
        problems.push(`${stream} message ${r.n} (sent ${rel(r.start)}, SIGTERM ${rel(termAt)}) failed: ${r.outcome}\n      ${reqs.map((q) => describe(q, acc)).join("\n      ") || "(no failed request recorded)"}`)
      }
      check(recs.filter((r) => r.start > termAt).length >= 10, `${stream}: only ${recs.filter((r) => r.start > termAt).length} messages sent after the SIGTERM`)
    }

    // ---- 2. nobody lost its session or rejoined; if one did, say why
    const rejoined = new Set()
    for(const c of clients){
      const why = []
      if(c.errors.length){ why.push(`socket errors ${JSON.stringify(c.errors.map((e) => [String(e.err), rel(e.at)]))}`) }
      if(c.closes.length){ why.push(`transport closes ${JSON.stringify(c.closes.map((e) => [e.code, e.reason, rel(e.at)]))}`) }
      if(c.ch.joinReplies.length !== 1){ why.push(`${c.ch.joinReplies.length} ok join replies (at ${c.ch.joinReplies.map((j) => rel(j.at)).join(", ")})`) }
      if(c.kind === "lp"){
        const used = [...new Set(c.net.filter((r) => r.kind === "lp").map((r) => r.session).filter(Boolean))]
        if(used.length !== 1 || used[0] !== c.sessionId){ why.push(`LongPoll sessions used ${JSON.stringify(used)}`) }
      } else {
        const sessions = [...new Set(c.sse.sessionEvents.map((e) => e.data?.session))]
        if(sessions.length !== 1 || sessions[0] !== c.sessionId){ why.push(`SSE sessions ${JSON.stringify(sessions)}`) }
        const flags = c.sse.sessionEvents.map((e) => e.data?.resumed)
        if(flags[0] !== false || flags.slice(1).some((x) => x !== true)){ why.push(`session events' resumed flags ${JSON.stringify(flags)}`) }
        if(c.socket.conn !== c.firstConn || c.sse.transports !== 1){ why.push(`phoenix replaced its transport (${c.sse.transports} SSETransports)`) }
        if(c.sse.gone.length){ why.push(`session_gone events ${JSON.stringify(c.sse.gone)}`) }
      }
      if(why.length){
        rejoined.add(c)
        const firstBad = c.net.find(failedRequest)
        const sessionLines = cluster.logs().filter((l) => l.includes(c.sessionId) && /level=(WARN|ERROR)|session ended/.test(l)).slice(0, 6)
        problems.push(`${c.name} (${c.kind}) lost its session or rejoined: ${why.join("; ")}\n      first failed request: ${firstBad ? describe(firstBad, acc) : "none recorded"}` +
          `\n      server WARN/ERROR/session-ended lines of session ${c.sessionId}: ${sessionLines.join(" | ") || "(none)"}`)
      }
    }
    if(rejoined.size === 0){ report.push(`every client kept its session and its one join: ${clients.map((c) => c.name).join(", ")}`) }

    // ---- 3. every numbered message exactly once and in order, for every lobby client; one order
    const refClient = lobby.find((c) => !rejoined.has(c)) ?? lobby[0]
    const ref = received(refClient.ch).map((m) => m.id)
    for(const c of lobbyNow){
      const got = received(c.ch)
      for(const stream of Object.keys(sent)){
        const ns = got.filter((m) => m.stream === stream).map((m) => m.n)
        // the late client gets everything sent after its join (and maybe a little before): a run
        // that ends with the last one
        const fromJoin = sent[stream].find((r) => r.start > lateJoinedAt)?.n ?? last[stream] + 1
        const from = c === late ? Math.min(ns[0] ?? fromJoin, fromJoin) : 1
        const probs = sequenceProblems(ns, from, last[stream])
        check(probs.length === 0, () => `${c.name} (${c.kind}) ${stream} ${from}..${last[stream]}: ${probs.join("; ")}`)
      }
      if(c !== late){
        const afterTerm = got.filter((m) => m.at > termAt).length
        check(afterTerm >= 10, `${c.name} received only ${afterTerm} numbered messages after the SIGTERM`)
        const ids = got.map((m) => m.id)
        const k = ids.findIndex((id, i) => id !== ref[i])
        check(k === -1 && ids.length === ref.length, () => `${c.name} saw another order than ${refClient.name} from position ${k}: ${ids.slice(k, k + 5)} vs ${ref.slice(k, k + 5)}`)
      }
    }
    const total = Object.values(last).reduce((a, b) => a + b, 0)
    report.push(`numbered messages sent ${JSON.stringify(last)} (${total}) until ${rel(stopAt)}, ${Object.values(sent).flat().filter((r) => r.ok).length} confirmed; received after the SIGTERM: ` +
      `${lobby.map((c) => `${c.name} ${received(c.ch).filter((m) => m.at > termAt).length}`).join(", ")}; late L5 (joined ${rel(lateJoinedAt)}) got ${received(late.ch).length}`)

    // ---- 4. presence: everybody lists everybody once, with its first meta; no leave of a live client
    for(const group of [lobbyNow, quiet]){
      try { await converge(group) } catch(e){ problems.push(e.message) }
    }
    const leaves = new Map() // "key ref" -> {key, ref, at, seenBy}
    for(const c of clients){
      for(const l of leavesSeen(c.ch)){
        const k = `${l.key} ${l.ref}`
        if(!leaves.has(k)){ leaves.set(k, {...l, seenBy: []}) }
        leaves.get(k).seenBy.push(c.name)
      }
    }
    for(const l of leaves.values()){
      problems.push(`presence_diff leave of live ${byKey(clients, l.key)} (user ${l.key}, meta ${l.ref}${firstRef[l.key]?.includes(l.ref) ? ", its first session's" : ""}) at ${rel(l.at)}, seen by ${l.seenBy.join(", ")}`)
    }
    for(const c of [...lobby, ...quiet]){
      check(JSON.stringify(c.ch.presence.state[c.key]?.metas.map((m) => m.phx_ref)) === JSON.stringify(firstRef[c.key]), `${c.name}'s presence ref changed`)
    }

    // ---- 5. the drain as the clients saw it
    // LongPoll: the quiet polls waiting at the victim were answered 204 at once, and the next poll
    // went to the survivor; lobby polls the victim answered after the SIGTERM were 200 or 204
    const lpDrained = []
    for(const c of lpClients){
      const polls = c.net.filter((r) => r.kind === "lp" && r.method === "GET")
      for(const [i, r] of polls.entries()){
        if(r.at > termAt || (r.end !== null && r.end < termAt) || instanceOf(r, acc) !== victim){ continue }
        const next = polls[i + 1]
        lpDrained.push({c, r, next, nextBy: next ? instanceOf(next, acc) : null})
      }
    }
    for(const {c, r, next, nextBy} of lpDrained){
      check(r.http === 200 && [200, 204].includes(r.status), () => `${c.name}'s poll waiting at ${V.name} at the SIGTERM: ${describe(r, acc)}`)
      check(r.end !== null && r.end - termAt < 1000, () => `${c.name}'s poll waiting at ${V.name} was answered ${r.end === null ? "never" : `${r.end - termAt} ms`} after the SIGTERM`)
      // During its drain delay the victim still answers (at once) what the
      // balancer sends it; what matters is that the next poll is answered.
      check(next && next.http === 200 && [200, 204, 410].includes(next.status) && (nextBy === survivor || next.end - termAt < 3000), () => `${c.name}'s next poll after ${V.name}'s answer: ${next ? describe(next, acc) : "none"}`)
      if(quiet.includes(c)){ check(r.status === 204, () => `quiet ${c.name}'s poll waiting at ${V.name} got ${r.status}, not 204`) }
    }
    check(lpDrained.some(({c}) => quiet.includes(c)), `no quiet poll was waiting at ${V.name} at the SIGTERM (${JSON.stringify(quietAtTerm)})`)
    report.push(`LongPoll polls waiting at ${V.name} at the SIGTERM: ${lpDrained.map(({c, r, next, nextBy}) =>
      `${c.name} ${r.status} ${r.end === null ? "never" : `${r.end - termAt} ms`} after the SIGTERM (waited ${r.end - r.at} ms), polled again ${next ? `${next.at - r.end} ms later` : "never"} on ${nameOf(nextBy)}`).join("; ")}`)

    // SSE: streams open at the victim ended cleanly with retry: 100, and the transport resumed on
    // the survivor from the last id it had (?lastEventId=), on the same session
    const sseDrained = []
    for(const c of sseClients){
      const streams = c.net.filter((r) => r.kind === "stream")
      for(const [i, r] of streams.entries()){
        if(r.at > termAt || (r.end !== null && r.end < termAt) || instanceOf(r, acc) !== victim){ continue }
        // The first stream after it on the survivor: during the victim's drain
        // delay EventSource may be sent back there first, and be told to retry.
        const next = streams.slice(i + 1).find((q) => instanceOf(q, acc) === survivor) ?? streams[i + 1]
        const d = {c: c.name, endedAfter: r.end === null ? null : r.end - termAt, retry100: /retry: 100\n\n$/.test(r.tail),
          nextAfter: next && r.end ? next.at - r.end : null, nextBy: next ? instanceOf(next, acc) : null}
        sseDrained.push(d)
        check(r.ended === "clean", () => `${c.name}'s stream at ${V.name} did not end cleanly: ${describe(r, acc)}; tail ${JSON.stringify(r.tail.slice(-200))}`)
        check(d.endedAfter !== null && d.endedAfter < 1000, `${c.name}'s stream at ${V.name} ended ${d.endedAfter} ms after the SIGTERM`)
        check(d.retry100, () => `${c.name}'s drained stream did not end with "retry: 100": ${JSON.stringify(r.tail.slice(-200))}`)
        if(!check(next, `${c.name}'s EventSource did not reconnect after the drained stream`)){ continue }
        check(d.nextBy === survivor, () => `${c.name}'s stream resumed on ${nameOf(d.nextBy)}: ${describe(next, acc)}`)
        check(d.nextAfter !== null && d.nextAfter < 3000, `${c.name}'s EventSource came back ${d.nextAfter} ms after the stream ended`)
        check(next.lastEventId !== null && next.lastEventId === r.lastId, `${c.name} resumed from ${next.lastEventId}; the last id of its stream was ${r.lastId}`)
        const hello = c.sse.sessionEvents.find((e) => e.at >= next.at)
        check(hello?.data?.resumed === true && hello.data.session === c.sessionId, () => `${c.name}'s resumed stream said ${JSON.stringify(hello?.data)}`)
      }
    }
    check(sseDrained.length >= 1, `no SSE stream was open at ${V.name} at the SIGTERM (streams then: ${JSON.stringify(streamsAtTerm)})`)
    report.push(`SSE streams open at ${V.name} at the SIGTERM: ${sseDrained.map((d) => `${d.c} ended ${d.retry100 ? "with retry: 100 " : ""}${d.endedAfter} ms after it, resumed ${d.nextAfter} ms later on ${nameOf(d.nextBy)}`).join("; ")}; ` +
      `"unavailable" events ${sseClients.map((c) => c.sse.unavailable.length).reduce((a, b) => a + b, 0)}`)

    // ---- 6. metrics of the survivor: before vs after the traffic
    const b = before[survivor]
    const a = await scrape(S)
    const moved = []
    const grew = (name, labels) => {
      const x = metric(b, name, labels)
      const y = metric(a, name, labels, {strict: true})
      check(y !== null && y > x, `${S.name}: ${name}${JSON.stringify(labels)} did not grow: ${x} -> ${y}`)
      moved.push(`${name}${JSON.stringify(labels)} ${x} -> ${y}`)
    }
    grew("sluice_messages_in_total", {transport: "longpoll"})
    grew("sluice_messages_in_total", {transport: "sse"})
    grew("sluice_messages_out_total", {kind: "broadcast", transport: "longpoll"})
    grew("sluice_messages_out_total", {kind: "broadcast", transport: "sse"})
    grew("sluice_joins_total", {outcome: "ok", pattern: "sala:*"})
    grew("sluice_delivery_latency_seconds_count", {})
    grew("sluice_redis_command_duration_seconds_count", {command: "evalsha"})
    grew("sluice_resumes_total", {transport: "sse"})
    const gauges = {}
    for(const [when, samples] of [["survivor after", a], ["victim before SIGTERM", midVictim]]){
      for(const transport of ["longpoll", "sse"]){
        const v = metric(samples, "sluice_open_requests", {transport}, {strict: true})
        if(when === "survivor after"){ check(v !== null, `${S.name} has no sluice_open_requests{transport="${transport}"}`) }
        if(v !== null){
          check(Number.isInteger(v) && v >= 0, `sluice_open_requests{transport="${transport}"} = ${v} (${when})`)
          gauges[`${when} ${transport}`] = v
        }
      }
    }
    // a bad token on an instance: one unauthorized refusal more
    const refusedBefore = metric(a, "sluice_requests_refused_total", {reason: "unauthorized", transport: "longpoll"})
    const bad = await fetch(`${S.base}/socket/longpoll?vsn=2.0.0&token=not-a-valid-token`, {signal: AbortSignal.timeout(SHORT)})
    const badBody = await bad.json()
    check(badBody.status === 403, `a bad token -> ${JSON.stringify(badBody)}`)
    const refusedAfter = metric(await scrape(S), "sluice_requests_refused_total", {reason: "unauthorized", transport: "longpoll"})
    check(refusedAfter === refusedBefore + 1, `sluice_requests_refused_total{reason="unauthorized",transport="longpoll"} ${refusedBefore} -> ${refusedAfter} after one bad token`)
    report.push(`/metrics of ${S.name}: ${moved.join("; ")}; sluice_open_requests ${JSON.stringify(gauges)}; ` +
      `a bad token -> status ${badBody.status}, sluice_requests_refused_total{reason="unauthorized",transport="longpoll"} ${refusedBefore} -> ${refusedAfter}`)
    report.push(`proxy counts ${JSON.stringify(p.counts)} refused ${JSON.stringify(p.refused)} failed(502) ${JSON.stringify(p.failed)}`)

    if(problems.length){
      assert.fail(`${problems.length} problem(s) with the drain of ${V.name}:\n  - ${problems.join("\n  - ")}`)
    }
    console.log(`[cluster drain report]\n  ${report.join("\n  ")}`)
  } catch(e){
    // the servers' logs, for evidence
    try { fs.writeFileSync(logFile, cluster.logs().join("\n") + "\n") } catch { /* best effort */ }
    e.message += `\n---- report ----\n  ${report.join("\n  ")}\n---- diagnostics ----\n${diagnostics()}`
    throw e
  } finally {
    stop = true
    proxyBase = null
    await closeAllClients().catch(() => {})
    await cluster.stop()
    await cluster.cleanKeys()
    assert.equal(await countKeysWithPrefix(cluster.redisUrl, cluster.prefix), 0, `keys of ${cluster.prefix} left behind`)
  }
})

/** The name of the client of a presence key. */
function byKey(clients, key){ return clients.find((c) => c.key === key)?.name ?? "?" }
