// The seed scenario of sala:lobby through a front proxy (nginx, or the round-robin proxy of
// rrproxy.mjs) over several sluice instances sharing one Redis (standalone or Cluster), with a
// kill -9 of one instance half-way; for cluster-nginx.test.mjs and cluster-rediscluster.test.mjs.
//
// Unmodified phoenix.js clients, over LongPoll, over Sluice's SSETransport (web/sse-transport.js
// with the npm `eventsource`) or over WebSocket (the npm `ws`), join sala:lobby with a phoenix.js
// Presence; two of them push numbered nuevo_mensaje and an API client POSTs numbered
// /api/broadcast anuncios, all the time. Half-way, the instance holding the most open requests
// (waiting polls, streams and WebSockets, from its /metrics) is killed with SIGKILL. Then, for
// every client that had no reason to reconnect: one session throughout, no transport or channel
// error, one join, every numbered message exactly once and in the same order as every other such
// client, and presence never shows a live client leaving. A reason to reconnect is a request of its
// own that failed at the front (a POST in flight at the killed instance gets a 502 there), or, for
// a WebSocket, being connected to the killed instance (WebSocket has no resume; as many WebSocket
// clients reconnect as the instance held). A client that reconnected: no duplicate, nothing out of
// order, joined again, and it works. A client reconnecting for no such reason fails the test.

import assert from "node:assert/strict"
import {execFileSync} from "node:child_process"
import {randomBytes} from "node:crypto"
import {EventSource} from "eventsource"
import {Presence, LongPoll} from "phoenix"
import WebSocket from "ws"
import {SSETransport} from "../../web/sse-transport.js"
import {SLUICE_BIN, SHORT, openClient, closeAllClients, join, push, pushOk, until, sleep, newUserId} from "./helpers.mjs"
import {startInstance, deleteKeysWithPrefix, countKeysWithPrefix, sessionOf, received, leavesSeen} from "./cluster-helpers.mjs"

const TOPIC = "sala:lobby"
/** The instances' flags on top of cluster-helpers' (window 2s): sessions outlive any recovery here. */
export const INSTANCE_ARGS = ["--session-timeout", "10s", "--sse-heartbeat", "1s", "--sse-retry", "500ms"]

// ---------------------------------------------------------------------------------------------
// Instances

/** Starts n instances on redisUrl with one fresh key prefix; `group.stop()`, `group.cleanKeys()`. */
export async function startInstances({n = 3, redisUrl, label}){
  const prefix = `sluicetest:${label}:${randomBytes(5).toString("hex")}:`
  const secret = randomBytes(32).toString("hex")
  const apiKey = randomBytes(16).toString("hex")
  const instances = []
  try {
    for(let i = 0; i < n; i++){
      instances.push(await startInstance({name: `sluice-${i}`, redisUrl, prefix, secret, apiKey, extraArgs: INSTANCE_ARGS}))
    }
  } catch(e){
    await Promise.all(instances.map((x) => x.stop()))
    await deleteKeysWithPrefix(redisUrl, prefix).catch(() => {})
    throw e
  }
  return {
    instances, prefix, secret, apiKey, redisUrl,
    token(userId, name){
      return execFileSync(SLUICE_BIN, ["token", "--secret", secret, "--user", String(userId), "--name", name],
        {encoding: "utf8", timeout: 10_000}).trim()
    },
    logs: () => instances.flatMap((x) => x.lines).sort(),
    async stop(){ await Promise.all(instances.map((x) => x.stop())) },
    /** Deletes the group's keys and checks none is left. */
    async cleanKeys(){
      await deleteKeysWithPrefix(redisUrl, prefix)
      assert.equal(await countKeysWithPrefix(redisUrl, prefix), 0, `keys of ${prefix} left behind`)
    },
  }
}

/** An instance's sluice_open_requests gauge: {sse, longpoll, websocket}. */
async function openRequests(inst){
  const res = await fetch(`${inst.base}/metrics`, {signal: AbortSignal.timeout(SHORT)})
  const text = await res.text()
  const out = {sse: 0, longpoll: 0, websocket: 0}
  for(const m of text.matchAll(/^sluice_open_requests\{[^}]*transport="(\w+)"[^}]*\}\s+(\S+)$/gm)){ out[m[1]] = Number(m[2]) }
  return out
}

// ---------------------------------------------------------------------------------------------
// Every request the clients make through a front: recorded, to tell which of them failed there.

const fronts = new Set()
const netLog = [] // {method, url, credential, at, end, http, failure}
const innerFetch = globalThis.fetch
globalThis.fetch = async (url, opts = {}) => {
  const s = String(url)
  if(![...fronts].some((f) => s.startsWith(f))){ return innerFetch(url, opts) }
  const credential = new Headers(opts.headers || {}).get("x-sluice-session")
  const rec = {method: opts.method || "GET", url: s, credential, at: Date.now(), end: null, http: null, failure: null}
  netLog.push(rec)
  try {
    const res = await innerFetch(url, opts)
    rec.http = res.status
    rec.end = Date.now()
    return res
  } catch(e){
    rec.end = Date.now()
    rec.failure = e.name === "AbortError" || e.name === "TimeoutError" ? "aborted" : `fetch failed: ${e.cause?.code || e.message}`
    throw e
  }
}

/** The requests of a client: its user token is in LongPoll and stream URLs, its credential on SSE POSTs. */
function requestsOf(c){
  const enc = encodeURIComponent(c.token)
  const sessions = new Set(sessionsOf(c))
  return netLog.filter((r) => r.url.includes(enc) || (r.credential && sessions.has(r.credential.slice(0, 32))))
}
/** A client's requests that failed at the front: a 5xx or a failed connection (not its own aborts). */
const failedRequests = (c) => requestsOf(c).filter((r) => r.http >= 500 || (r.failure && r.failure !== "aborted"))

/** The sessions a client used, in order of first use (none for WebSocket, which has no session id). */
function sessionsOf(c){
  if(c.transport === "websocket"){ return [] }
  if(c.transport === "sse"){ return [...new Set(c.rec.streams.map((s) => s.session))] }
  const enc = encodeURIComponent(c.token)
  return [...new Set(netLog.filter((r) => r.url.includes(enc)).map((r) => sessionOf(r.url)).filter(Boolean))]
}

// ---------------------------------------------------------------------------------------------
// Clients

/** An SSETransport whose EventSource records every stream request, session event and error. */
function recordingSSE(rec){
  class Recorded extends SSETransport {}
  // the last id this client's streams delivered (the transport opens one EventSource per stream)
  const es = {lastId: null}
  Recorded.EventSource = class extends EventSource {
    constructor(url, init){
      super(url, {...init, fetch: (u, opts) => {
        // the resume point: the Last-Event-ID header of an EventSource reconnecting by itself, or
        // the lastEventId the transport puts in the URL of the stream it reopens
        const lastEventId = opts?.headers?.["Last-Event-ID"] ?? new URL(String(u)).searchParams.get("lastEventId")
        const r = {at: Date.now(), lastEventId, lastIdSeen: es.lastId}
        rec.streamReqs.push(r)
        return fetch(u, opts)
      }})
      const seen = (ev) => { if(ev.lastEventId){ es.lastId = ev.lastEventId } }
      this.addEventListener("message", seen)
      this.addEventListener("session", (ev) => {
        seen(ev)
        let d = null
        try { d = JSON.parse(ev.data) } catch { /* recorded as null */ }
        rec.streams.push({at: Date.now(), session: d?.session ?? null, resumed: d?.resumed ?? null})
      })
      this.addEventListener("session_gone", (ev) => rec.gone.push({at: Date.now(), data: ev.data}))
      this.addEventListener("unavailable", (ev) => rec.unavailable.push({at: Date.now(), data: ev.data}))
      this.addEventListener("error", (ev) => rec.esErrors.push({at: Date.now(), message: ev.message ?? null}))
    }
  }
  return Recorded
}

/** Opens a phoenix.js client through `front` and joins the lobby with a Presence. */
async function openLobbyClient(group, front, name, transport){
  const rec = {streamReqs: [], streams: [], gone: [], unavailable: [], esErrors: [], closes: [], chErrors: []}
  const userId = newUserId()
  const token = group.token(userId, name)
  const socketOpts = {transport: {sse: recordingSSE(rec), websocket: WebSocket, longpoll: LongPoll}[transport]}
  const client = await openClient({socketUrl: `${front}/socket`}, {userId, name, token, socketOpts})
  Object.assign(client, {transport, rec, firstConn: client.socket.conn})
  client.socket.onClose((ev) => rec.closes.push({at: Date.now(), code: ev?.code, reason: ev?.reason}))
  const ch = client.channel(TOPIC)
  ch.presence = new Presence(ch)
  ch.joinReplies = []
  ch.joinPush.receive("ok", (resp) => ch.joinReplies.push({resp, at: Date.now()}))
  ch.onError((reason) => rec.chErrors.push({at: Date.now(), reason}))
  let timer
  const limit = new Promise((resolve, reject) => { timer = setTimeout(() => reject(new Error(`${name}: join not answered`)), 2 * SHORT) })
  try { await Promise.race([join(ch), limit]) } finally { clearTimeout(timer) }
  client.ch = ch
  return client
}

// ---------------------------------------------------------------------------------------------
// Numbered messages: "seq <pusher> <n>" nuevo_mensaje, and anuncio {origen: "api", n}.

function startSenders(group, front, pushers, gapMs = 30){
  const sent = {api: []} // stream -> [{n, start, end, ok, outcome}]
  let stop = false
  let paused = false
  const loop = async (stream, call) => {
    sent[stream] = sent[stream] || []
    for(let n = 1; !stop; n++){
      while(paused && !stop){ await sleep(5) }
      const r = {n, start: Date.now(), end: null, ok: false, outcome: null}
      sent[stream].push(r)
      try { Object.assign(r, await call(n)) } catch(e){ r.outcome = e.message }
      r.end = Date.now()
      await sleep(gapMs)
    }
  }
  const loops = pushers.map((c) => loop(c.name, async (n) => {
    const x = await push(c.ch, "nuevo_mensaje", {contenido: `seq ${c.name} ${n}`}, SHORT)
    return {ok: x.status === "ok", outcome: x.status}
  }))
  loops.push(loop("api", async (n) => {
    const res = await fetch(`${front}/api/broadcast`, {
      method: "POST", headers: {authorization: `Bearer ${group.apiKey}`, "content-type": "application/json"},
      body: JSON.stringify({topic: TOPIC, event: "anuncio", payload: {origen: "api", n}}), signal: AbortSignal.timeout(SHORT),
    })
    const text = await res.text()
    return {ok: res.status === 200, outcome: `HTTP ${res.status} ${text.slice(0, 60).trim()}`}
  }))
  return {
    sent,
    confirmed: (k) => sent[k].filter((r) => r.ok).map((r) => r.n),
    pause(on){ paused = on },
    async stop(){ stop = true; await Promise.all(loops) },
  }
}


// ---------------------------------------------------------------------------------------------
// Checks

/** One session, one transport, one join, no error of any kind, every later stream resumed. */
function assertSameSession(c){
  assert.deepEqual(c.errors, [], `${c.name}: phoenix.js saw transport errors`)
  assert.deepEqual(c.rec.closes, [], `${c.name}: phoenix.js saw the transport close`)
  assert.deepEqual(c.rec.chErrors, [], `${c.name}: the channel errored`)
  assert.equal(c.socket.conn, c.firstConn, `${c.name}: the socket replaced its transport`)
  if(c.transport !== "websocket"){ assert.equal(sessionsOf(c).length, 1, `${c.name}: several sessions ${JSON.stringify(sessionsOf(c))}`) }
  assert.equal(c.ch.joinReplies.length, 1, `${c.name}: the channel rejoined`)
  assert.ok(c.ch.isJoined(), `${c.name}: the channel is not joined`)
  if(c.transport === "sse"){
    assert.deepEqual(c.rec.gone, [], `${c.name}: a stream said session_gone`)
    assert.deepEqual(c.rec.unavailable, [], `${c.name}: a stream said unavailable`)
    assert.deepEqual(c.rec.streams.slice(1).filter((s) => s.resumed !== true), [], `${c.name}: a reconnected stream did not resume the session`)
    assert.ok(c.rec.streamReqs.slice(1).every((r) => r.lastEventId !== null && r.lastEventId === r.lastIdSeen),
      `${c.name}: a stream reconnected without a resume point (Last-Event-ID or ?lastEventId=) = the last id received`)
  }
}

/** Every numbered message once, each sender's in order, none unsent, none confirmed missing. */
function assertExactlyOnce(c, senders){
  const got = received(c)
  const ids = got.map((m) => m.id)
  assert.deepEqual(ids.filter((id, i) => ids.indexOf(id) !== i), [], `${c.name} got duplicates`)
  for(const stream of Object.keys(senders.sent)){
    const ns = got.filter((m) => m.stream === stream).map((m) => m.n)
    for(let i = 1; i < ns.length; i++){ assert.ok(ns[i] > ns[i - 1], `${c.name}: ${stream} out of order: ${ns[i - 1]} then ${ns[i]}`) }
    const have = new Set(ns)
    assert.deepEqual(senders.confirmed(stream).filter((n) => !have.has(n)), [], `${c.name} missed confirmed ${stream} messages`)
    const attempted = new Set(senders.sent[stream].map((r) => r.n))
    assert.deepEqual(ns.filter((n) => !attempted.has(n)), [], `${c.name} got ${stream} messages nobody sent`)
  }
  return ids
}

// ---------------------------------------------------------------------------------------------

/**
 * Runs the scenario. `front` is {url, failuresAt(i)}: the proxy's base URL, and how many requests
 * it saw fail at (or retried away from) instance i. `clientSpec` is [[name, "longpoll"|"sse"|"websocket"]];
 * names starting with "S" also push. Returns a report (lines); a failure carries diagnostics.
 */
export async function lobbyKillScenario({group, front, clientSpec, label}){
  fronts.add(front.url)
  const clients = []
  const t0 = Date.now()
  const report = []
  try {
    for(const [name, transport] of clientSpec){ clients.push(await openLobbyClient(group, front.url, name, transport)) }
    // join: the reply carries the lobby's history; everyone's Presence lists everyone, one meta each
    for(const c of clients){ assert.ok(Array.isArray(c.ch.joinReplies[0].resp.mensajes), `${c.name}: join reply ${JSON.stringify(c.ch.joinReplies[0].resp)}`) }
    const keys = clients.map((c) => c.key).sort()
    for(const c of clients){
      await until(() => JSON.stringify(c.ch.presence.list((k) => k).sort()) === JSON.stringify(keys) &&
        c.ch.presence.list((k, p) => p.metas.length).every((n) => n === 1), `${c.name} sees all ${keys.length} users, one meta each`, SHORT)
    }

    const pushers = clients.filter((c) => c.name.startsWith("S"))
    const senders = startSenders(group, front.url, pushers)
    await sleep(1500)

    // the victim: the instance holding the most open requests. The senders hold their next
    // message for a moment so that polls park (as they do between messages); streams stay open.
    senders.pause(true)
    let open = []
    await sleep(300) // polls answered just now come back and park
    const deadline = Date.now() + SHORT
    for(;;){
      open = await Promise.all(group.instances.map(openRequests))
      const total = open.map((o) => o.sse + o.longpoll + o.websocket)
      if(Math.max(...total) >= 2 || Date.now() > deadline){ break }
      await sleep(50)
    }
    const total = open.map((o) => o.sse + o.longpoll + o.websocket)
    const victim = total.indexOf(Math.max(...total))
    assert.ok(total[victim] >= 2, `no instance holds 2 open requests to cut: ${JSON.stringify(open)}`)
    const killAt = Date.now()
    await group.instances[victim].kill9()
    senders.pause(false)
    report.push(`killed sluice-${victim} at +${killAt - t0} ms holding ${JSON.stringify(open[victim])} open requests (all: ${JSON.stringify(open)})`)

    await sleep(3000)
    await senders.stop()
    // the SSE transport repeats a POST that failed at the front, on its session: its frames go
    // through once the lock the killed instance held on that session expires
    await until(() => clients.every((c) => c.transport !== "sse" || c.socket.conn.bufferedAmount === 0),
      "the SSE clients' POSTs repeated after the kill went through", 25_000)

    // who may have reconnected: a client one of whose own requests failed at the front, or a
    // WebSocket client connected to the killed instance (as many as it held)
    const reconnected = clients.filter((c) => c.rec.closes.length > 0 || c.errors.length > 0 || sessionsOf(c).length > 1)
    const wsCut = reconnected.filter((c) => c.transport === "websocket" && failedRequests(c).length === 0)
    for(const c of reconnected.filter((x) => !wsCut.includes(x))){
      assert.ok(failedRequests(c).length > 0, `${c.name} (${c.transport}) lost its session with no failed request of its own: ` +
        `sessions ${JSON.stringify(sessionsOf(c))}, closes ${JSON.stringify(c.rec.closes)}, errors ${c.errors.length}`)
    }
    const cutAt = (c) => c.rec.closes[0]?.at ?? c.errors[0]?.at
    for(const c of wsCut){ assert.ok(cutAt(c) >= killAt, `${c.name}'s WebSocket closed before the kill: ${JSON.stringify(c.rec.closes)}`) }
    assert.equal(wsCut.length, open[victim].websocket, `WebSocket clients closed by the kill: ${wsCut.map((c) => c.name)}; the instance held ${open[victim].websocket}`)
    const intact = clients.filter((c) => !reconnected.includes(c))
    assert.ok(intact.length >= 2, `only ${intact.map((c) => c.name)} kept their session`)
    for(const c of intact){ assertSameSession(c) }
    for(const k of Object.keys(senders.sent).filter((k) => !reconnected.some((c) => c.name === k))){
      const after = senders.sent[k].filter((r) => r.ok && r.start > killAt + 500).length
      assert.ok(after >= 5, `${k} sent only ${after} confirmed messages after the kill: ${JSON.stringify(senders.sent[k].filter((r) => !r.ok))}`)
    }

    // every intact client gets the last confirmed message of every sender...
    const last = Object.fromEntries(Object.keys(senders.sent).map((k) => [k, Math.max(0, ...senders.confirmed(k))]))
    for(const c of intact){
      await until(() => {
        const got = new Set(received(c).map((m) => m.id))
        return Object.entries(last).every(([k, n]) => n === 0 || got.has(`${k}:${n}`))
      }, `${c.name} receives the last confirmed message of every sender ${JSON.stringify(last)}`, 2 * SHORT)
    }
    await sleep(500) // room for a duplicate to show up
    // ...and all of them exactly once, in one and the same order
    const refIds = assertExactlyOnce(intact[0], senders)
    for(const c of intact){
      assert.deepEqual(assertExactlyOnce(c, senders), refIds, `${c.name} saw another sequence than ${intact[0].name}`)
    }
    const uncertain = Object.fromEntries(Object.keys(senders.sent).map((k) => [k, senders.sent[k].filter((r) => !r.ok)
      .map((r) => `${r.n} (${r.outcome}; ${refIds.includes(`${k}:${r.n}`) ? "delivered" : "not delivered"})`)]))

    // a client that reconnected: no duplicate, in the reference order, and it works again
    for(const c of reconnected){
      const ids = received(c).map((m) => m.id)
      assert.deepEqual(ids.filter((id, i) => ids.indexOf(id) !== i), [], `${c.name} (reconnected) got duplicates`)
      let k = 0
      for(const id of ids){
        const at = refIds.indexOf(id, k)
        assert.ok(at >= 0, `${c.name} (reconnected) got ${id} out of the reference order`)
        k = at + 1
      }
      await until(() => c.ch.isJoined() && c.ch.joinReplies.length >= 2, `${c.name} (reconnected) is joined again`, 2 * SHORT)
      assert.deepEqual(await pushOk(c.ch, "ping", {de: c.name}), {de: c.name}, `${c.name} (reconnected) works again`)
      const fr = failedRequests(c)[0]
      const why = fr ? `its ${fr.method} failed at +${fr.at - t0} ms (${fr.http ?? fr.failure})` : `its WebSocket closed at +${cutAt(c) - t0} ms (${c.rec.closes[0]?.code ?? "error"})`
      report.push(`${c.name} (${c.transport}) reconnected after ${why}, joined again at +${c.ch.joinReplies.at(-1).at - t0} ms; ` +
        `got ${ids.length} of ${refIds.length}, no duplicate, in order`)
    }

    // presence: no intact client ever saw another intact one leave; all live users listed
    const intactKeys = new Set(intact.map((c) => c.key))
    for(const c of intact){
      assert.deepEqual(leavesSeen(c).filter((l) => intactKeys.has(l.key)), [], `${c.name} saw a live client leave`)
      await until(() => JSON.stringify(c.ch.presence.list((k) => k).sort()) === JSON.stringify(keys) &&
        intact.every((x) => c.ch.presence.state[x.key]?.metas.length === 1),
      `${c.name}'s Presence lists every user, the intact ones with one meta (has ${JSON.stringify(c.ch.presence.list((k, p) => [k, p.metas.length]))})`, SHORT)
    }

    // the kill did hit: requests failed at the victim, or were sent on to another instance
    const atVictim = front.failuresAt(victim)
    assert.ok(atVictim >= 1, `the front saw no request fail at the killed instance sluice-${victim}`)
    const cutStreams = clients.filter((c) => c.rec.esErrors.some((e) => e.at >= killAt)).map((c) => c.name)
    if(clientSpec.every(([, t]) => t === "sse")){
      assert.ok(cutStreams.length >= 1, "no SSE stream was cut by the kill")
    }

    report.push(`${intact.length} intact clients (${intact.map((c) => `${c.name}/${c.transport}`).join(" ")}) each got all ${refIds.length} numbered messages ` +
      `exactly once, in one order, on one session; last confirmed ${JSON.stringify(last)}`)
    report.push(`streams cut by the kill and resumed: ${cutStreams.join(" ") || "-"}; requests failed at or retried away from sluice-${victim}: ${atVictim}; ` +
      `uncertain calls ${JSON.stringify(uncertain)}`)
    console.log(`[${label} report]\n  ${report.join("\n  ")}`)
    return report
  } catch(e){
    const lines = [...report]
    for(const c of clients){
      lines.push(`${c.name}/${c.transport} sessions ${JSON.stringify(sessionsOf(c).map((s) => s?.slice(0, 8)))} errors ${c.errors.length} ` +
        `closes ${c.rec.closes.length} joins ${c.ch?.joinReplies.length} esErrors ${c.rec.esErrors.length} failed ` +
        JSON.stringify(failedRequests(c).map((r) => `${r.method} +${r.at - t0} ${r.http ?? r.failure}`)))
    }
    const notable = group.logs().filter((l) => /level=(WARN|ERROR)|panic|<test|<process/.test(l))
    lines.push(`server log: ${notable.length} notable lines (first 40):`, ...notable.slice(0, 40))
    e.message += `\n---- diagnostics ----\n${lines.join("\n").slice(0, 30_000)}`
    throw e
  } finally {
    await Promise.race([closeAllClients().catch(() => {}), sleep(3000)])
    fronts.delete(front.url)
  }
}
