// The SSE transport (web/sse-transport.js, phoenix.js' Socket with the npm `eventsource`) against
// several sluice instances sharing one Redis behind the round-robin proxy of rrproxy.mjs, with
// numbered messages flowing all the time (two phoenix.js clients pushing nuevo_mensaje, an API
// client POSTing /api/broadcast):
//   1. kill -9 of the instance serving streams, two instances behind the proxy: the proxy cuts the
//      streams it was serving (the upstream died mid-response), each EventSource reconnects through
//      the proxy with Last-Event-ID, lands on the survivor and resumes the same session there;
//   2. no kill, three instances: a cutting proxy in front of the round-robin one drops every stream
//      after a few hundred to a few thousand bytes, mid-event (right after the id line, in the
//      middle of the data, before the closing blank line, after a complete event, at a raw byte
//      count, inside the stream's preamble), and each resume lands on whichever instance is next.
// For every client: every numbered message arrives exactly once and in the same order as everyone
// else's, on one session (every later stream says resumed), phoenix.js never sees a transport or
// channel error, the channel never rejoins, and presence never shows a live client leaving. A
// client whose POST was in flight at the killed instance (the proxy's 502) repeats it with the same
// batch and keeps its session too; its frames wait for the session lock the killed instance held
// (until it expires, up to 15 s), then go through in order, which the checks wait for.
//
// The instances are started with cluster-helpers' startInstance plus --session-timeout 10s (far longer than any recovery here), --sse-heartbeat 1s and
// --sse-retry 500ms; each test uses a fresh SLUICE_REDIS_PREFIX on SLUICE_TEST_REDIS (default
// redis://127.0.0.1:6379/0) and deletes its keys at the end.

import {test} from "node:test"
import assert from "node:assert/strict"
import {execFileSync} from "node:child_process"
import {randomBytes, randomInt} from "node:crypto"
import http from "node:http"
import {EventSource} from "eventsource"
import {Presence} from "phoenix"
import {SSETransport} from "../../web/sse-transport.js"
import {SLUICE_BIN, SHORT, openClient, closeAllClients, join, push, pushOk, until, sleep, newUserId} from "./helpers.mjs"
import {deleteKeysWithPrefix, countKeysWithPrefix, startInstance, MAIN_REDIS_URL, received, leavesSeen} from "./cluster-helpers.mjs"
import {startProxy as startRoundRobin} from "./rrproxy.mjs"

const SESSION_TIMEOUT_S = 10
const HEARTBEAT = "1s"
const RETRY = "500ms"
const TOPIC = "sala:lobby"

/** Starts one `sluice serve` with this file's SSE and session settings. */
function startNode({name, prefix, secret, apiKey}){
  return startInstance({name, redisUrl: MAIN_REDIS_URL, prefix, secret, apiKey,
    extraArgs: ["--session-timeout", `${SESSION_TIMEOUT_S}s`, "--sse-heartbeat", HEARTBEAT, "--sse-retry", RETRY]})
}

/** n instances on one fresh Redis prefix, behind the round-robin proxy. */
async function startSSECluster({n, label}){
  const prefix = `sluicetest:cluster-sse:${label}:${randomBytes(5).toString("hex")}:`
  const secret = randomBytes(32).toString("hex")
  const apiKey = randomBytes(16).toString("hex")
  const instances = []
  try {
    for(let i = 0; i < n; i++){ instances.push(await startNode({name: `sluice-${i}`, prefix, secret, apiKey})) }
  } catch(e){
    await Promise.all(instances.map((x) => x.stop()))
    await deleteKeysWithPrefix(MAIN_REDIS_URL, prefix).catch(() => {})
    throw e
  }
  const rr = await startRoundRobin(instances.map((x) => x.base))
  return {
    instances, rr, prefix, secret, apiKey,
    token(userId, name){
      return execFileSync(SLUICE_BIN, ["token", "--secret", secret, "--user", String(userId), "--name", name],
        {encoding: "utf8", timeout: 10_000}).trim()
    },
    /** POST /api/broadcast to `base` (default: the round-robin proxy). */
    async broadcast(payload, base = rr.url){
      const res = await fetch(`${base}/api/broadcast`, {
        method: "POST", headers: {authorization: `Bearer ${apiKey}`, "content-type": "application/json"},
        body: JSON.stringify({topic: TOPIC, event: "anuncio", payload}), signal: AbortSignal.timeout(SHORT),
      })
      return {status: res.status, text: await res.text()}
    },
    logs: () => instances.flatMap((x) => x.lines).sort(),
    async stop(){
      await rr.close()
      await Promise.all(instances.map((x) => x.stop()))
    },
  }
}

// ---------------------------------------------------------------------------------------------
// A cutting proxy: everything passes through to `target`, except that each SSE stream (GET
// /socket/sse answered 200) is dropped once some bytes went through, at a point chosen by a
// strategy that rotates from one stream to the next.

const CUTS = {
  // exactly after `limit` bytes, wherever that falls
  "raw": (ev) => null,
  // the id line of a message event is through, its data line is not
  "after-id": (ev) => ev.indexOf("\n") + 1,
  // half of the data line
  "mid-data": (ev) => {
    const d = ev.indexOf("\ndata: ") + 7
    return d + Math.floor((ev.length - 2 - d) / 2)
  },
  // id and data lines complete, the blank line that dispatches the event missing
  "before-blank": (ev) => ev.length - 1,
  // a complete event, then the drop: the clean case
  "after-event": (ev) => ev.length,
  // within the first bytes: the retry and session preamble of the stream
  "raw-early": (ev) => null,
}
const STRATEGIES = Object.keys(CUTS)

async function startCutter(target, {minBytes = 500, maxBytes = 6000} = {}){
  const t = new URL(target)
  const cutter = {active: false, streams: 0, cuts: 0, byStrategy: Object.fromEntries(STRATEGIES.map((s) => [s, 0]))}
  const server = http.createServer((req, res) => {
    const isStream = req.method === "GET" && req.url.startsWith("/socket/sse")
    const up = http.request({hostname: t.hostname, port: t.port, method: req.method, path: req.url,
      headers: {...req.headers, host: t.host}, agent: false}, (ures) => {
      const headers = {...ures.headers}
      for(const h of ["connection", "keep-alive", "transfer-encoding"]){ delete headers[h] }
      res.writeHead(ures.statusCode, headers)
      ures.on("error", () => {})
      ures.on("close", () => { if(!ures.complete && !res.destroyed){ res.destroy() } })
      if(!isStream || ures.statusCode !== 200){ ures.pipe(res); return }
      relay(ures, res, up, STRATEGIES[cutter.streams++ % STRATEGIES.length])
    })
    up.on("error", () => res.destroy())
    res.on("close", () => up.destroy())
    req.pipe(up)
  })

  function relay(ures, res, up, strategy){
    const raw = strategy === "raw" || strategy === "raw-early"
    const limit = strategy === "raw-early" ? randomInt(1, 250) : randomInt(minBytes, maxBytes)
    let pending = Buffer.alloc(0)
    let sent = 0
    let cut = false
    const cutWith = (bytes) => {
      cut = true
      cutter.cuts++
      cutter.byStrategy[strategy]++
      const drop = () => { res.destroy(); up.destroy() }
      if(bytes.length === 0){ drop() } else { res.write(bytes, drop) }
    }
    ures.on("data", (chunk) => {
      if(cut){ return }
      if(!cutter.active){
        if(pending.length > 0){ res.write(pending); pending = Buffer.alloc(0) }
        res.write(chunk)
        return
      }
      if(raw){
        if(sent + chunk.length >= limit){ cutWith(chunk.subarray(0, limit - sent)); return }
        sent += chunk.length
        res.write(chunk)
        return
      }
      pending = Buffer.concat([pending, chunk])
      for(let end; (end = pending.indexOf("\n\n")) !== -1;){
        const ev = pending.subarray(0, end + 2)
        pending = pending.subarray(end + 2)
        const text = ev.toString()
        const message = !/^event:/m.test(text) && /^id: /m.test(text) && /^data: /m.test(text)
        if(message && sent >= limit){
          cutWith(ev.subarray(0, CUTS[strategy](ev)))
          return
        }
        res.write(ev)
        sent += ev.length
      }
    })
    ures.on("end", () => {
      if(cut){ return }
      if(pending.length > 0){ res.write(pending) }
      res.end()
    })
  }

  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve))
  cutter.url = `http://127.0.0.1:${server.address().port}`
  cutter.close = () => new Promise((resolve) => { server.close(() => resolve()); server.closeAllConnections() })
  return cutter
}

// ---------------------------------------------------------------------------------------------
// Clients: phoenix.js over SSETransport (not withFallback), each with its own EventSource subclass
// that records every stream request (and its resume point), every session event and every error.

function recordingTransport(rec){
  class Recorded extends SSETransport {}
  // the last id this client's streams delivered (the transport opens one EventSource per stream)
  const es = {lastId: null}
  Recorded.EventSource = class extends EventSource {
    constructor(url, init){
      super(url, {...init, fetch: (u, opts) => {
        // the resume point: the Last-Event-ID header of an EventSource reconnecting by itself, or
        // the lastEventId the transport puts in the URL of the stream it reopens
        const lastEventId = opts?.headers?.["Last-Event-ID"] ?? new URL(String(u)).searchParams.get("lastEventId")
        const r = {at: Date.now(), lastEventId, lastIdSeen: es.lastId, status: null, failure: null}
        rec.streamReqs.push(r)
        return fetch(u, opts).then((res) => { r.status = res.status; return res }, (e) => { r.failure = e.cause?.code || e.message; throw e })
      }})
      const seen = (ev) => { if(ev.lastEventId){ es.lastId = ev.lastEventId } }
      this.addEventListener("message", seen)
      this.addEventListener("session", (ev) => {
        seen(ev)
        let d = null
        try { d = JSON.parse(ev.data) } catch { /* recorded as null */ }
        rec.streams.push({at: Date.now(), session: d?.session ?? null, resumed: d?.resumed ?? null, id: ev.lastEventId})
      })
      this.addEventListener("session_gone", (ev) => rec.gone.push({at: Date.now(), data: ev.data}))
      this.addEventListener("unavailable", (ev) => rec.unavailable.push({at: Date.now(), data: ev.data}))
      this.addEventListener("error", (ev) => rec.esErrors.push({at: Date.now(), message: ev.message ?? null, code: ev.code ?? null, state: this.readyState}))
    }
  }
  return Recorded
}

/** Opens a phoenix.js SSE client at `base` (a proxy) and joins the lobby with a Presence. */
async function openSSEClient(cluster, base, name){
  const rec = {streamReqs: [], streams: [], gone: [], unavailable: [], esErrors: [], closes: [], chErrors: []}
  const userId = newUserId()
  const token = cluster.token(userId, name)
  const client = await openClient({socketUrl: `${base}/socket`}, {userId, name, token, socketOpts: {transport: recordingTransport(rec)}})
  client.rec = rec
  client.firstConn = client.socket.conn
  client.socket.onClose((ev) => rec.closes.push({at: Date.now(), code: ev.code, reason: ev.reason}))
  const ch = client.channel(TOPIC)
  ch.presence = new Presence(ch)
  ch.joinReplies = []
  ch.joinPush.receive("ok", (resp) => ch.joinReplies.push({resp, at: Date.now()}))
  ch.onError((reason) => rec.chErrors.push({at: Date.now(), reason}))
  let timer
  const limit = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${name}: join not answered`)), 2 * SHORT) })
  try { await Promise.race([join(ch), limit]) } finally { clearTimeout(timer) }
  client.ch = ch
  client.session = client.socket.conn.sessionId
  return client
}

/** The proxy-log records of a client's stream requests, in order, and of its sessions' POSTs. */
const streamRecords = (rr, c) => rr.log.filter((r) => r.method === "GET" && r.url.startsWith("/socket/sse") && r.url.includes(encodeURIComponent(c.token)))
const sessionsOf = (c) => [...new Set(c.rec.streams.map((s) => s.session))]
const postRecords = (rr, c) => rr.log.filter((r) => r.method === "POST" && r.url.startsWith("/socket/sse") &&
  sessionsOf(c).includes(r.session))
const failedPosts = (rr, c) => postRecords(rr, c).filter((r) => r.status === 502 || r.error)

// ---------------------------------------------------------------------------------------------
// Numbered messages: "seq <pusher> <n>" nuevo_mensaje, and anuncio {origen: "api", n}.

function startSenders(cluster, pushers, {gapMs = 30, apiBase} = {}){
  const sent = {api: []} // stream -> [{n, start, end, ok, outcome}]
  let stop = false
  const loops = pushers.map(async (c) => {
    sent[c.name] = []
    for(let n = 1; !stop; n++){
      const r = {n, start: Date.now(), end: null, ok: false, outcome: null}
      sent[c.name].push(r)
      try {
        const x = await push(c.ch, "nuevo_mensaje", {contenido: `seq ${c.name} ${n}`}, SHORT)
        r.ok = x.status === "ok"
        r.outcome = x.status
      } catch(e){ r.outcome = e.message }
      r.end = Date.now()
      await sleep(gapMs)
    }
  })
  loops.push((async () => {
    for(let n = 1; !stop; n++){
      const r = {n, start: Date.now(), end: null, ok: false, outcome: null}
      sent.api.push(r)
      try {
        const x = await cluster.broadcast({origen: "api", n}, apiBase)
        r.ok = x.status === 200
        r.outcome = `HTTP ${x.status} ${x.text.slice(0, 60).trim()}`
      } catch(e){ r.outcome = e.message }
      r.end = Date.now()
      await sleep(gapMs)
    }
  })())
  return {
    sent,
    confirmed: (k) => sent[k].filter((r) => r.ok).map((r) => r.n),
    async stop(){ stop = true; await Promise.all(loops) },
  }
}


// ---------------------------------------------------------------------------------------------
// Checks

/** Waits until every client in `cs` has the last confirmed message of every sender. */
async function drain(senders, cs, timeout){
  const last = Object.fromEntries(Object.keys(senders.sent).map((k) => [k, Math.max(0, ...senders.confirmed(k))]))
  for(const c of cs){
    await until(() => {
      const got = new Set(received(c).map((m) => m.id))
      return Object.entries(last).every(([k, n]) => n === 0 || got.has(`${k}:${n}`))
    }, `${c.name} receives the last confirmed message of every sender ${JSON.stringify(last)}`, timeout)
  }
  return last
}

/**
 * The session side of the strict check: no transport or channel error, one transport, one
 * session, every later stream resumed, one join.
 */
function assertSameSession(c){
  assert.deepEqual(c.errors, [], `${c.name}: phoenix.js saw transport errors`)
  assert.deepEqual(c.rec.closes, [], `${c.name}: phoenix.js saw the transport close`)
  assert.deepEqual(c.rec.chErrors, [], `${c.name}: the channel errored`)
  assert.deepEqual(c.rec.gone, [], `${c.name}: a stream said session_gone`)
  assert.deepEqual(c.rec.unavailable, [], `${c.name}: a stream said unavailable`)
  assert.equal(c.socket.conn, c.firstConn, `${c.name}: the socket replaced its transport`)
  assert.equal(c.socket.conn.sessionId, c.session, `${c.name}: the transport's session changed`)
  assert.deepEqual(sessionsOf(c), [c.session], `${c.name}: its streams spoke of several sessions`)
  const notResumed = c.rec.streams.slice(1).filter((s) => s.resumed !== true)
  assert.deepEqual(notResumed, [], `${c.name}: a reconnected stream did not resume the session`)
  assert.equal(c.ch.joinReplies.length, 1, `${c.name}: the channel rejoined`)
  assert.ok(c.ch.isJoined(), `${c.name}: the channel is not joined`)
}

/**
 * The strict check for a client whose POSTs did not fail: assertSameSession, and every numbered
 * message exactly once, in order, in the sequence `refIds` (the same for every such client).
 */
function assertIntact(c, senders, refIds){
  assertSameSession(c)

  const got = received(c)
  const ids = got.map((m) => m.id)
  const dups = ids.filter((id, i) => ids.indexOf(id) !== i)
  assert.deepEqual(dups, [], `${c.name} got duplicates`)
  for(const stream of Object.keys(senders.sent)){
    const ns = got.filter((m) => m.stream === stream).map((m) => m.n)
    for(let i = 1; i < ns.length; i++){ assert.ok(ns[i] > ns[i - 1], `${c.name}: ${stream} out of order: ${ns[i - 1]} then ${ns[i]}`) }
    const have = new Set(ns)
    const missing = senders.confirmed(stream).filter((n) => !have.has(n))
    assert.deepEqual(missing, [], `${c.name} missed confirmed ${stream} messages`)
    const attempted = new Set(senders.sent[stream].map((r) => r.n))
    assert.deepEqual(ns.filter((n) => !attempted.has(n)), [], `${c.name} got ${stream} messages nobody sent`)
  }
  if(refIds){ assert.deepEqual(ids, refIds, `${c.name} saw another sequence than the reference client`) }
  return ids
}

/** Presence as the intact clients saw it: no live user ever left; at the end all are listed. */
async function assertPresence(intact, live){
  const liveKeys = live.map((c) => c.key).sort()
  const intactKeys = new Set(intact.map((c) => c.key))
  for(const c of intact){
    const spurious = leavesSeen(c).filter((l) => intactKeys.has(l.key))
    assert.deepEqual(spurious, [], `${c.name} saw a live (intact) client leave`)
    await until(() => JSON.stringify(c.ch.presence.list((k) => k).sort()) === JSON.stringify(liveKeys) &&
      intact.every((x) => c.ch.presence.state[x.key]?.metas.length === 1),
    `${c.name}'s Presence lists the ${live.length} users, the intact ones with one meta ` +
      `(has ${JSON.stringify(c.ch.presence.list((k, p) => [k, p.metas.length]))})`, SHORT)
  }
}

/** Server log lines that would explain a failure: warnings, errors, ended sessions, process events. */
const notableLogs = (cluster) => cluster.logs().filter((l) => /level=(WARN|ERROR)|panic|session ended|<test|<process/.test(l))

function diagnostics(cluster, clients, t0, extra = []){
  const out = [...extra]
  const rr = cluster.rr
  out.push(`instances: ${cluster.instances.map((x) => `${x.name}=${x.base} pid ${x.pid}${x.alive() ? "" : " (dead)"}`).join(", ")}`)
  out.push(`round-robin proxy counts ${JSON.stringify(rr.counts)} refused ${JSON.stringify(rr.refused)} failed(502/cut) ${JSON.stringify(rr.failed)}`)
  for(const c of clients){
    out.push(`client ${c.name} (user ${c.userId}) session ${c.session}; sessions ${JSON.stringify(sessionsOf(c))}; socket errors ${c.errors.length} ` +
      `closes ${JSON.stringify(c.rec.closes)} channel errors ${c.rec.chErrors.length} joins ${c.ch?.joinReplies.length}; gone ${c.rec.gone.length}`)
    const srecs = streamRecords(rr, c)
    out.push(`  streams at proxy: ${srecs.map((r) => `#${r.id} ${r.upstream}@+${r.start - t0}${r.end ? `..+${r.end - t0}` : "..open"} ${r.status}${r.error ? ` ${r.error}` : ""}`).join(" | ")}`)
    out.push(`  session events: ${c.rec.streams.map((s) => `+${s.at - t0} ${s.session?.slice(0, 8)} resumed=${s.resumed}`).join(" | ")}`)
    out.push(`  stream requests: ${c.rec.streamReqs.map((r) => `+${r.at - t0} LEI=${r.lastEventId ? r.lastEventId.slice(-24) : "-"} ${r.status ?? r.failure}`).join(" | ")}`)
    out.push(`  EventSource errors: ${c.rec.esErrors.map((e) => `+${e.at - t0} ${e.message} state=${e.state}`).join(" | ")}`)
    const fp = failedPosts(rr, c)
    if(fp.length){ out.push(`  failed POSTs: ${fp.map((r) => `#${r.id} upstream ${r.upstream} +${r.start - t0} ${r.status} ${r.error}`).join(" | ")}`) }
  }
  const notable = notableLogs(cluster)
  out.push(`server logs: ${notable.length} notable lines (first 60):`, ...notable.slice(0, 60))
  return out.join("\n").slice(0, 40_000)
}

/** Runs fn with a fresh cluster; a failure carries the diagnostics; always stops and cleans up. */
async function withCluster(opts, fn){
  const cluster = await startSSECluster(opts)
  const t0 = Date.now()
  const clients = []
  const extra = []
  try {
    await fn(cluster, clients, t0, extra)
  } catch(e){
    e.message += `\n---- diagnostics ----\n${diagnostics(cluster, clients, t0, extra)}`
    throw e
  } finally {
    await Promise.race([closeAllClients().catch(() => {}), sleep(3000)])
    await cluster.stop()
    await deleteKeysWithPrefix(MAIN_REDIS_URL, cluster.prefix)
    assert.equal(await countKeysWithPrefix(MAIN_REDIS_URL, cluster.prefix), 0, `keys of ${cluster.prefix} left behind`)
  }
}

/**
 * Makes the round-robin proxy's next request go to instance `target`: the proxy takes instances in
 * turn, so a few GET /healthz move its turn along. (A client's first request is its stream.)
 */
async function steer(rr, target){
  const n = rr.upstreams.length
  for(let i = 0; i < n; i++){
    const last = rr.log.at(-1)
    if(!last || (last.upstream + 1) % n === target){ return }
    await (await fetch(`${rr.url}/healthz`, {signal: AbortSignal.timeout(SHORT)})).arrayBuffer()
  }
}

/**
 * Opens the clients (L1..L6 listen, S1 and S2 also push) through `base`, their streams spread in
 * turn over the instances; everyone sees everyone.
 */
async function openAll(cluster, base, clients){
  const names = ["L1", "L2", "L3", "L4", "L5", "L6", "S1", "S2"]
  for(const [i, name] of names.entries()){
    await steer(cluster.rr, i % cluster.instances.length)
    clients.push(await openSSEClient(cluster, base, name))
  }
  const keys = clients.map((c) => c.key).sort()
  for(const c of clients){
    await until(() => JSON.stringify(c.ch.presence.list((k) => k).sort()) === JSON.stringify(keys), `${c.name} sees all ${keys.length} users`, SHORT)
  }
  return {listeners: clients.filter((c) => c.name.startsWith("L")), pushers: clients.filter((c) => c.name.startsWith("S"))}
}

// ---------------------------------------------------------------------------------------------

test("kill -9 of the instance serving SSE streams, two instances behind the round-robin proxy: the cut streams resume on the survivor with Last-Event-ID, same session, every message exactly once and in order", {timeout: 60_000}, async () => {
  await withCluster({n: 2, label: "kill"}, async (cluster, clients, t0, extra) => {
    const rr = cluster.rr
    const {listeners, pushers} = await openAll(cluster, rr.url, clients)
    const senders = startSenders(cluster, pushers)
    await sleep(1500)

    // where each client's stream is right now: its open stream request at the proxy
    const home = new Map()
    await until(() => clients.every((c) => {
      const open = streamRecords(rr, c).filter((r) => r.end === null && r.upstream !== null)
      if(open.length !== 1){ return false }
      home.set(c, open[0])
      return true
    }), "every client has one open stream at the proxy", SHORT)
    const perInstance = [0, 1].map((i) => listeners.filter((c) => home.get(c).upstream === i).length)
    const victim = perInstance[0] === perInstance[1] ? randomInt(2) : perInstance[0] > perInstance[1] ? 0 : 1
    const survivor = 1 - victim
    const cutClients = clients.filter((c) => home.get(c).upstream === victim)
    assert.ok(perInstance[0] >= 1 && perInstance[1] >= 1, `the listeners' streams are not spread over both instances: ${JSON.stringify(perInstance)}`)
    const streamsBefore = new Map(clients.map((c) => [c, c.rec.streams.length]))
    const reqsBefore = new Map(clients.map((c) => [c, c.rec.streamReqs.length]))
    const killAt = Date.now()
    await cluster.instances[victim].kill9()
    extra.push(`killed sluice-${victim} at +${killAt - t0} ms; streams on it: ${cutClients.map((c) => c.name).join(", ")}`)

    await sleep(3000)
    await senders.stop()
    const stopAt = Date.now()

    // A client whose POST failed at the proxy (in flight at the killed instance: 502) repeats it
    // with the same batch, on its session: its frames go through once the lock the killed instance
    // held on that session expires. Wait for them, then everyone must be intact.
    const retried = clients.filter((c) => failedPosts(rr, c).length > 0)
    await until(() => retried.every((c) => c.socket.conn.bufferedAmount === 0),
      `the POSTs of ${retried.map((c) => c.name).join(", ")} repeated after the kill went through`, 25_000)
    const intact = clients
    assert.ok(intact.some((c) => cutClients.includes(c)), "no intact client had its stream cut by the kill")
    for(const c of intact){ assertSameSession(c) }
    // the messages went on after the kill (a pusher whose POST is repeated waits for the lock)
    for(const k of Object.keys(senders.sent).filter((k) => !retried.some((c) => c.name === k))){
      const after = senders.sent[k].filter((r) => r.ok && r.start > killAt + 1000).length
      assert.ok(after >= 5, `${k} sent only ${after} confirmed messages after the kill`)
    }
    const last = await drain(senders, intact, 2 * SHORT)
    await sleep(500) // room for a duplicate to show up

    // the kill cut each stream the victim served, at the proxy, and each resumed on the survivor
    for(const c of cutClients){
      const before = home.get(c)
      assert.ok(before.end !== null && before.end >= killAt, `${c.name}'s stream on the victim did not end at the kill`)
      assert.ok(before.error, `${c.name}'s stream at the proxy did not fail: ${JSON.stringify(before)}`)
      assert.ok(c.rec.esErrors.some((e) => e.at >= killAt), `${c.name}'s EventSource saw no error after the kill`)
      const later = c.rec.streams.slice(streamsBefore.get(c))
      assert.ok(later.length >= 1, `${c.name}: no stream after the kill`)
      assert.ok(later.every((s) => s.session === c.session && s.resumed === true), `${c.name}: ${JSON.stringify(later)}`)
      const reqs = c.rec.streamReqs.slice(reqsBefore.get(c))
      assert.ok(reqs.length >= 1 && reqs.every((r) => r.lastEventId !== null && r.lastEventId === r.lastIdSeen),
        `${c.name}: reconnects without a resume point (Last-Event-ID or ?lastEventId=) = the last id received: ${JSON.stringify(reqs)}`)
      const resumedAt = streamRecords(rr, c).filter((r) => r.start > killAt && r.upstream !== null)
      assert.ok(resumedAt.length >= 1 && resumedAt.every((r) => r.upstream === survivor), `${c.name}: reconnects at ${JSON.stringify(resumedAt)}`)
    }
    for(const c of intact.filter((x) => !cutClients.includes(x))){
      assert.equal(c.rec.streams.length, 1, `${c.name}'s stream on the survivor was cut too`)
    }

    // exactly once, in order, one sequence for everyone intact
    const refIds = received(intact[0]).map((m) => m.id)
    for(const c of intact){ assertIntact(c, senders, refIds) }
    // uncertain calls (failed at the proxy or timed out): reached every intact client or none
    const uncertain = {}
    for(const k of Object.keys(senders.sent)){
      uncertain[k] = senders.sent[k].filter((r) => !r.ok).map((r) => `${r.n} (${r.outcome}; ${refIds.includes(`${k}:${r.n}`) ? "delivered" : "not delivered"})`)
    }

    // the clients whose POST failed at the kill: when their repeated POST went through
    const report = retried.map((c) => {
      const fp = failedPosts(rr, c)[0]
      const again = postRecords(rr, c).filter((r) => r.start > fp.start && r.status === 200)[0]
      const where = fp.upstream === null ? "(connection failed before the proxy counted it)" : `to sluice-${fp.upstream}`
      return `${c.name}'s POST #${fp.id} ${where} at +${fp.start - t0} ms failed at the proxy (${fp.status}${fp.error ? ` ${fp.error}` : ""}); ` +
        `repeated, same session, ${again ? `answered 200 at +${again.end - t0} ms (#${again.id})` : "answer not in the proxy log"}`
    })

    await assertPresence(intact, clients)
    // the survivor ended no intact client's session
    const ended = cluster.logs().filter((l) => /session ended/.test(l) && intact.some((c) => l.includes(c.session)))
    assert.deepEqual(ended, [], "an intact client's session ended")

    console.log(`[cluster SSE kill -9 report]\n  killed sluice-${victim} at +${killAt - t0} ms; listeners' streams per instance ${JSON.stringify(perInstance)}; ` +
      `streams cut by the kill: ${cutClients.map((c) => c.name).join(", ")}; senders stopped at +${stopAt - t0} ms\n  ` +
      `resumed on sluice-${survivor}: ${cutClients.filter((c) => intact.includes(c)).map((c) => {
        const r = c.rec.streamReqs[reqsBefore.get(c)]
        return `${c.name} after ${r.at - killAt} ms (${c.rec.streamReqs.length - reqsBefore.get(c)} request(s))`
      }).join(", ")}\n  ` +
      `intact clients (${intact.map((c) => c.name).join(", ")}) each got all ${refIds.length} numbered messages exactly once, same order; last confirmed ${JSON.stringify(last)}\n  ` +
      `uncertain calls: ${JSON.stringify(uncertain)}\n  ` +
      `proxy counts ${JSON.stringify(rr.counts)} refused ${JSON.stringify(rr.refused)} failed ${JSON.stringify(rr.failed)}; ` +
      `server WARN/ERROR/session-ended lines: ${JSON.stringify(notableLogs(cluster).filter((l) => !/<test|<process/.test(l)))}` +
      (report.length ? `\n  ${report.join("\n  ")}` : "\n  no POST was in flight at the killed instance"))
  })
})

test("streams cut mid-event by a proxy, three instances behind the round-robin proxy: every resume lands on whichever instance and continues the session exactly, every message once and in order", {timeout: 30_000}, async () => {
  await withCluster({n: 3, label: "cut"}, async (cluster, clients, t0, extra) => {
    const rr = cluster.rr
    const cutter = await startCutter(rr.url)
    try {
      // the clients open before the cutting starts: a stream cut before its session event (the
      // transport not yet open) is a failed connect, which phoenix.js retries with a new session
      const {pushers} = await openAll(cluster, cutter.url, clients)
      cutter.active = true
      const senders = startSenders(cluster, pushers, {apiBase: cutter.url, gapMs: 50})
      await sleep(6000)
      await senders.stop()
      cutter.active = false // open and new streams pass untouched: the backlog drains
      extra.push(`cutter: ${cutter.streams} streams, ${cutter.cuts} cuts ${JSON.stringify(cutter.byStrategy)}`)
      for(const c of clients){ assertSameSession(c) }
      const last = await drain(senders, clients, 2 * SHORT)
      await sleep(500)

      // nothing failed anywhere: every client is held to the strict check
      for(const c of clients){
        assert.deepEqual(failedPosts(rr, c), [], `${c.name}: a POST failed`)
      }
      for(const k of Object.keys(senders.sent)){
        assert.deepEqual(senders.sent[k].filter((r) => !r.ok).map((r) => `${r.n}: ${r.outcome}`), [], `${k}: calls failed`)
      }
      const refIds = received(clients[0]).map((m) => m.id)
      for(const c of clients){ assertIntact(c, senders, refIds) }
      await assertPresence(clients, clients)

      // the streams really were cut, mid-event, many times, and resumed on other instances
      assert.ok(cutter.cuts >= 30, `only ${cutter.cuts} cuts`)
      for(const s of STRATEGIES){ assert.ok(cutter.byStrategy[s] >= 2, `only ${cutter.byStrategy[s]} cuts "${s}"`) }
      const perClient = []
      let moved = 0
      let resumes = 0
      for(const c of clients){
        const srecs = streamRecords(rr, c).filter((r) => r.status === 200 && r.upstream !== null)
        assert.ok(c.rec.streams.length >= 3, `${c.name} had only ${c.rec.streams.length} streams`)
        const reqs = c.rec.streamReqs.slice(1)
        assert.ok(reqs.every((r) => r.lastEventId !== null && r.lastEventId === r.lastIdSeen),
          `${c.name}: a reconnect without a resume point (Last-Event-ID or ?lastEventId=) = the last id received`)
        for(let i = 1; i < srecs.length; i++){ resumes++; if(srecs[i].upstream !== srecs[i - 1].upstream){ moved++ } }
        perClient.push(`${c.name} ${c.rec.streams.length} streams on instances ${[...new Set(srecs.map((r) => r.upstream))].sort().join("")}`)
      }
      assert.ok(moved >= resumes / 3, `only ${moved} of ${resumes} resumes changed instance`)
      const ended = cluster.logs().filter((l) => /session ended/.test(l))
      assert.deepEqual(ended, [], "a session ended")

      console.log(`[cluster SSE cut report]\n  cutter: ${cutter.streams} streams, ${cutter.cuts} cuts ${JSON.stringify(cutter.byStrategy)}; ` +
        `${moved} of ${resumes} resumes landed on another instance; proxy counts ${JSON.stringify(rr.counts)}; ` +
        `server WARN/ERROR/session-ended lines: ${JSON.stringify(notableLogs(cluster).filter((l) => !/<test|<process/.test(l)))}\n  ` +
        `${perClient.join("; ")}\n  every client got all ${refIds.length} numbered messages exactly once, same order, one session, no error; last ${JSON.stringify(last)}`)
    } finally {
      await Promise.race([closeAllClients().catch(() => {}), sleep(3000)])
      await cutter.close()
    }
  })
})
