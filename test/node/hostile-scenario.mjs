// The seed scenario through a hostile proxy (hostile-proxy.mjs), shared by hostile.test.mjs (one
// instance) and cluster-hostile.test.mjs (two instances on Redis): phoenix.js clients of every
// transport kind join `sala:lobby` through the proxy, each pushes numbered `nuevo_mensaje`s at
// 10/s while an API client POSTs numbered `/api/broadcast`s straight to the server(s); then every
// client's record is checked: every message that was published reaches it exactly once, and in
// order per sender.
//
// Transport kinds:
//   sse        SSETransport.withFallback() (the module's recommended transport, falling back to
//              its ResilientLongPoll)
//   sse-only   SSETransport alone
//   lp         ResilientLongPoll
//   stock      phoenix.js's own LongPoll (lossless only where no response is lost)

import {EventSource} from "eventsource"
import {LongPoll} from "phoenix"
import {SSETransport, ResilientLongPoll} from "../../web/sse-transport.js"
import {openClient, join, newUserId, sleep} from "./helpers.mjs"
import {startHostileProxy, seededRandom} from "./hostile-proxy.mjs"
import {memoryStorage} from "./sse-helpers.mjs"

// Node 20 has no EventSource: the npm package
SSETransport.EventSource = EventSource

// phoenix.js's stock LongPoll logs every proxy error page it cannot parse: hundreds of lines here
const consoleLog = console.log
console.log = (...args) => {
  if(typeof args[0] === "string" && args[0].startsWith("failed to parse JSON response")){ return }
  consoleLog(...args)
}

export const TOPIC = "sala:lobby"
export const MODULE_KINDS = ["sse", "sse-only", "lp"]
export const KINDS = [...MODULE_KINDS, "stock"]

// Scaled down from the issue's 5 clients × 40 messages + 100 broadcasts, to keep each run short.
export const SCENARIO = {
  clients: {"sse": 2, "sse-only": 1, "lp": 2, "stock": 2},
  messagesPerClient: 8,
  broadcasts: 16,
  intervalMs: 100, // 10 messages/s per sender
}

/**
 * The hostilities, each with the proxy's options, the server flags it needs to bite (a stream's
 * lifetime short enough that a buffered stream delivers, a heartbeat longer than the idle cut),
 * and whether it loses responses (stock phoenix.js must be lossless where it does not).
 */
export const HOSTILITIES = [
  {name: "buffer whole responses", proxy: {bufferAll: true}, server: ["--sse-max-lifetime", "2s"],
    losesResponses: false, bites: (s) => s.buffered > 0},
  {name: "buffer N bytes", proxy: (rng) => ({bufferBytes: rng.int(1024, 6144)}), server: ["--sse-max-lifetime", "2s"],
    losesResponses: false, bites: (s) => s.chunked > 0},
  // a quiet period (3 s from 400 ms on, for every sender) lets the cut bite on streams, whose
  // heartbeats are rarer; polls are answered well before it (a poll cut when the machine is slow
  // would be a lost response)
  {name: "idle cut", proxy: {idleCutMs: 2000}, server: ["--sse-heartbeat", "5s", "--longpoll-window", "500ms"], quietMs: 3000,
    losesResponses: false, bites: (s) => s.idleCuts > 0},
  {name: "cut each connection after N s, mid-event", proxy: {cutAfterMs: [500, 1500]}, server: [],
    losesResponses: true, bites: (s) => s.ageCuts > 0 && s.midEventCuts > 0},
  {name: "retry POSTs, 502 the first answer", proxy: {replayPosts: true, post502Share: 0.3}, server: [],
    losesResponses: true, bites: (s) => s.replayed > 0 && s.answered502 > 0},
  {name: "drop 10% of responses after the upstream handled them", proxy: {dropShare: 0.1}, server: [],
    losesResponses: true, bites: (s) => s.dropped > 0},
  // the module resumes with ?lastEventId= and never needs the header: what bites here is that
  // streams end (their lifetime) and resume without it
  {name: "strip Last-Event-ID", proxy: {stripHeaders: ["last-event-id"]}, server: ["--sse-max-lifetime", "1s"],
    losesResponses: false, bites: (s) => s.streams >= 4},
  {name: "strip Last-Event-ID, cut each connection after N s", proxy: {stripHeaders: ["last-event-id"], cutAfterMs: [500, 1500]}, server: [],
    losesResponses: true, bites: (s) => s.midEventCuts > 0},
  {name: "gzip the stream", proxy: {gzip: true}, server: ["--sse-max-lifetime", "2s"],
    losesResponses: false, bites: (s) => s.gzipped > 0},
]

/** Flags every hostile-suite server gets: sessions outlive any repair here, quick heartbeats. */
export const SERVER_FLAGS = ["--session-timeout", "5s", "--sse-heartbeat", "1s", "--sse-retry", "300ms"]

/** The proxy options of a hostility, with its seed. */
export function proxyOptions(h, seed){
  const rng = seededRandom(seed)
  const base = typeof h.proxy === "function" ? h.proxy(rng) : h.proxy
  return {...base, seed: rng.fork("proxy").seed}
}

/** A transport class of `kind` for one client (fresh options and memory each), whose instances go to `created`. */
function transportFor(kind, created){
  const base = {
    "sse": () => SSETransport.withFallback({storage: memoryStorage()}),
    "sse-only": () => SSETransport,
    "lp": () => ResilientLongPoll,
    "stock": () => LongPoll,
  }[kind]()
  return class extends base {
    constructor(...args){
      super(...args)
      created.push({at: Date.now(), t: this})
    }
  }
}

/** What a client's transports were doing, for a failure message. */
function describeTransports(created, t0){
  return created.map(({at, t}) => {
    const inner = t.transport ?? t
    const fields = {state: t.readyState, inner: inner.constructor.name, session: inner.sessionId ?? (inner.token ? "token" : null),
      streamFailures: inner.streamFailures, lastEventId: inner.lastEventId ? "set" : undefined, es: inner.es ? inner.es.readyState : undefined,
      fellBack: t.fellBack, reason: t.reason}
    return `+${at - t0}ms ${JSON.stringify(fields)}`
  }).join("; ")
}

/** The name of the transport a client ended on. */
function transportName(client){
  const conn = client.socket.conn
  const t = conn && conn.transport ? conn.transport : conn
  if(!t){ return "none" }
  if(t instanceof SSETransport){ return "sse" }
  if(t instanceof ResilientLongPoll){ return conn.reason ? `lp (${conn.reason})` : "lp" }
  if(t instanceof LongPoll){ return "stock" }
  return t.constructor.name
}

/**
 * Runs the scenario once through a hostile proxy in front of `upstreams`.
 * `server` is a helpers.mjs-style server (token(), broadcast()) whose broadcasts go straight to
 * the instances, not through the proxy. Resolves {proxy stats, per-client results}.
 */
export async function runScenario({server, upstreams, hostility, seed, broadcast}){
  const proxy = await startHostileProxy(upstreams, proxyOptions(hostility, seed))
  const proxyStats = () => Object.fromEntries(Object.entries(proxy.stats).filter(([, v]) => v > 0))
  const via = {...server, socketUrl: proxy.socketUrl}
  const clients = []
  try {
    // open and join everyone first: messages start once all are in the lobby
    const specs = []
    for(const [kind, n] of Object.entries(SCENARIO.clients)){
      for(let i = 1; i <= n; i++){ specs.push({kind, name: `${kind}-${i}`}) }
    }
    await Promise.all(specs.map(async ({kind, name}) => {
      const userId = newUserId()
      // a plain SSE client behind a buffering proxy opens when its first stream ends
      const created = []
      const t0 = Date.now()
      const c = await openClient(via, {userId, name, openTimeout: 15_000,
        socketOpts: {transport: transportFor(kind, created), timeout: 15_000, reconnectAfterMs: () => 200}})
        .catch((e) => { throw new Error(`${name}: ${e.message}; its transports: ${describeTransports(created, t0)}; proxy ${JSON.stringify(proxyStats())}`) })
      Object.assign(c, {kind, label: name, opens: 1, joinReplies: [], pushes: []})
      c.socket.onOpen(() => { c.opens++ })
      const ch = c.channel(TOPIC)
      ch.joinPush.receive("ok", (resp) => c.joinReplies.push(resp))
      await join(ch, 15_000)
      c.ch = ch
      clients.push(c)
    }))

    // senders: every client, plus the API; numbered, at 10/s
    const started = Date.now()
    const api = {sent: [], failed: []}
    // a hostility may want a quiet period: from 400 ms on, for quietMs, nobody sends
    const quietFrom = started + 400
    const quiet = async () => {
      const now = Date.now()
      if(hostility.quietMs && now >= quietFrom && now < quietFrom + hostility.quietMs){ await sleep(quietFrom + hostility.quietMs - now) }
    }
    const sending = clients.map(async (c, k) => {
      await sleep(k * 13) // not all in the same tick
      for(let n = 1; n <= SCENARIO.messagesPerClient; n++){
        await quiet()
        const p = {n, outcome: "pending", push: null}
        c.pushes.push(p)
        p.push = c.ch.push("nuevo_mensaje", {contenido: `hs ${c.label} ${n}`}, 15_000)
          .receive("ok", () => { p.outcome = "ok" })
          .receive("error", (e) => { p.outcome = `error ${JSON.stringify(e)}` })
          .receive("timeout", () => { p.outcome = "timeout" })
        await sleep(SCENARIO.intervalMs)
      }
    })
    sending.push((async () => {
      for(let n = 1; n <= SCENARIO.broadcasts; n++){
        await quiet()
        try { await broadcast({origen: "api", n}); api.sent.push(n) } catch(e){ api.failed.push({n, error: e.message}) }
        await sleep(SCENARIO.intervalMs)
      }
    })())
    await Promise.all(sending)

    // wait until the module's clients have every published message (and stock clients too where
    // no response is lost), and the module's pushes are answered, for half a second in a row
    const waitFor = clients.filter((c) => MODULE_KINDS.includes(c.kind) || !hostility.losesResponses)
    const deadline = Date.now() + 30_000
    let settledSince = null
    while(Date.now() < deadline){
      const universe = publishedIds(clients, api)
      const done = waitFor.every((c) => {
        const got = new Set(received(c).map((m) => m.id))
        return [...universe].every((id) => got.has(id)) &&
          (!MODULE_KINDS.includes(c.kind) || c.pushes.every((p) => p.outcome !== "pending"))
      })
      if(done){
        settledSince ??= Date.now()
        if(Date.now() - settledSince >= 500){ break }
      } else {
        settledSince = null
      }
      await sleep(50)
    }
    const universe = publishedIds(clients, api)
    const results = clients.map((c) => judge(c, universe))
    // pushes a lost session never answers: their timers would keep the test process alive
    for(const c of clients){ for(const p of c.pushes){ if(p.outcome === "pending"){ p.push.cancelTimeout() } } }
    return {proxy: proxy.stats, results, api, ms: Date.now() - started}
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => {})))
    await proxy.close()
  }
}

/** The numbered messages a client received live, in order: [{id, sender, n}]. */
export function received(c){
  const out = []
  for(const e of c.ch.rec.events){
    if(e.event === "mensaje_recibido"){
      const m = /^hs (\S+) (\d+)$/.exec(e.payload.contenido || "")
      if(m){ out.push({id: `${m[1]}:${m[2]}`, sender: m[1], n: Number(m[2]), contenido: e.payload.contenido}) }
    } else if(e.event === "anuncio" && e.payload.origen === "api"){
      out.push({id: `api:${e.payload.n}`, sender: "api", n: e.payload.n})
    }
  }
  return out
}

/** Every message known to be published: answered ok, or received by anyone. */
function publishedIds(clients, api){
  const ids = new Set(api.sent.map((n) => `api:${n}`))
  for(const c of clients){
    for(const p of c.pushes){ if(p.outcome === "ok"){ ids.add(`${c.label}:${p.n}`) } }
    for(const m of received(c)){ ids.add(m.id) }
  }
  return ids
}

/** One client's figures against the published messages. */
function judge(c, universe){
  const got = received(c)
  const ids = got.map((m) => m.id)
  const seen = new Set()
  let duplicates = 0
  for(const id of ids){ if(seen.has(id)){ duplicates++ } else { seen.add(id) } }
  const missed = [...universe].filter((id) => !seen.has(id))
  const outOfOrder = []
  const last = {}
  for(const m of got){
    if(last[m.sender] !== undefined && m.n <= last[m.sender]){ outOfOrder.push(`${m.sender} ${last[m.sender]} then ${m.n}`) }
    last[m.sender] = Math.max(last[m.sender] ?? 0, m.n)
  }
  // what a rejoin's history (the join reply's `mensajes`) gave back of the missed messages
  const history = new Set(c.joinReplies.slice(1).flatMap((r) => (r.mensajes || []).map((m) => m.contenido)))
  const repaired = missed.filter((id) => !id.startsWith("api:") && history.has(`hs ${id.replace(":", " ")}`)).length
  return {
    name: c.label, kind: c.kind, ended: transportName(c), expected: universe.size, received: ids.length,
    missed: missed.length, missedIds: missed.slice(0, 20), duplicates, outOfOrder,
    reconnects: c.opens - 1, joins: c.joinReplies.length, repaired,
    pushes: c.pushes.map((p) => p.outcome).filter((o) => o !== "ok"),
  }
}

/** Problems a run's results show, for the assertion message (empty: as it should be). */
export function problems(hostility, run){
  const out = []
  for(const r of run.results){
    const strict = MODULE_KINDS.includes(r.kind)
    if(r.duplicates > 0){ out.push(`${r.name}: ${r.duplicates} duplicated`) }
    if(r.outOfOrder.length > 0){ out.push(`${r.name}: out of order ${r.outOfOrder.slice(0, 5).join(", ")}`) }
    if(strict || !hostility.losesResponses){
      if(r.missed > 0){ out.push(`${r.name}: missed ${r.missed} of ${r.expected} (${r.missedIds.join(" ")})`) }
      if(r.joins !== 1 || r.reconnects !== 0){ out.push(`${r.name}: ${r.reconnects} reconnects, ${r.joins} joins`) }
    }
    if(strict && r.pushes.length > 0){ out.push(`${r.name}: pushes not ok: ${r.pushes.join(", ")}`) }
  }
  if(run.api.failed.length > 0){ out.push(`api broadcasts failed: ${JSON.stringify(run.api.failed)}`) }
  return out
}

/** Per kind: missed/expected, duplicates, reconnects (summed over its clients), for the report. */
export function summarize(run){
  const out = {}
  for(const kind of KINDS){
    const rs = run.results.filter((r) => r.kind === kind)
    if(rs.length === 0){ continue }
    const sum = (f) => rs.reduce((a, r) => a + f(r), 0)
    out[kind] = {
      missed: sum((r) => r.missed), expected: sum((r) => r.expected), duplicates: sum((r) => r.duplicates),
      reconnects: sum((r) => r.reconnects), repaired: sum((r) => r.repaired),
      ended: [...new Set(rs.map((r) => r.ended))].join("/"),
    }
  }
  return out
}

/** The report table: one row per hostility, one column per transport kind. */
export function reportTable(title, seed, rows){
  const lines = [`[${title}] seed ${seed}: missed/expected deliveries, duplicates, reconnects per transport kind (summed over its clients)`]
  lines.push(`| hostility | ${KINDS.join(" | ")} | proxy did |`)
  lines.push(`|---|${KINDS.map(() => "---").join("|")}|---|`)
  for(const {hostility, summary, proxy} of rows){
    const cells = KINDS.map((k) => {
      const s = summary[k]
      if(!s){ return "-" }
      return `${s.missed}/${s.expected} missed, ${s.duplicates} dup, ${s.reconnects} reconn${s.repaired ? ` (${s.repaired} back by history)` : ""}${s.ended !== k && !(k === "sse-only" && s.ended === "sse") ? `, on ${s.ended}` : ""}`
    })
    const did = Object.entries(proxy).filter(([k, v]) => v > 0 && k !== "requests").map(([k, v]) => `${k} ${v}`).join(", ")
    lines.push(`| ${hostility} | ${cells.join(" | ")} | ${did} |`)
  }
  return lines.join("\n")
}
