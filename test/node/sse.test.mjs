// The SSE transport (web/sse-transport.js) with the unmodified phoenix.js Socket against a live
// sluice: the LongPoll suite's scenarios over SSE (and mixed with LongPoll clients), exact resume
// after the stream drops or ends, session loss, the asset served by the binary, and the fallback
// to LongPoll behind proxies that buffer the stream.

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import {EventSource} from "eventsource"
import {LongPoll, Presence} from "phoenix"
import {SSETransport, ResilientLongPoll, withFallback} from "../../web/sse-transport.js"
import {
  REPO_ROOT, SHORT, SESSION_TIMEOUT_MS, openClient, closeAllClients, join, push, pushOk, pushNoReply,
  memberRoom, newRoomId, newUserId, until, sleep, isoUtc, flushed,
} from "./helpers.mjs"
import {startSluice, startProxy, memoryStorage} from "./sse-helpers.mjs"
import {startHostileProxy} from "./hostile-proxy.mjs"

// Node 20 has no EventSource: the npm package, which resumes with Last-Event-ID like browsers.
SSETransport.EventSource = EventSource

// EventSource reconnects after the server's `retry:`; an idle stream's poll keeps its session
// alive for one heartbeat period (then --session-timeout, 2 s): both short here
const HEARTBEAT_MS = 1000
let server
const proxies = []
before(async () => { server = await startSluice(["--sse-retry", "200ms", "--sse-heartbeat", `${HEARTBEAT_MS}ms`]) })
afterEach(async () => {
  await closeAllClients()
  await Promise.all(proxies.splice(0).map((p) => p.stop()))
})
after(async () => { await closeAllClients(); await server?.stop() })

/** A phoenix.js client over SSE (helpers' openClient with the transport replaced). */
function openSSE(srv, opts = {}){
  return openClient(srv, {...opts, socketOpts: {transport: SSETransport, ...opts.socketOpts}})
}

/** A proxy in front of srv, stopped after the test; clients reach it through `via(srv, proxy)`. */
async function proxyFor(srv, opts){
  const proxy = await startProxy(srv.base, opts)
  proxies.push(proxy)
  return proxy
}
const via = (srv, proxy) => ({...srv, socketUrl: proxy.socketUrl})

/** Records the socket's closes (phoenix onClose) and errors (onError). */
function watch(socket){
  const seen = {closes: [], errors: []}
  socket.onClose((ev) => seen.closes.push(ev))
  socket.onError((err) => seen.errors.push(err))
  return seen
}

test("the binary serves /js/sse-transport.js: the module in web/, as JavaScript, briefly cacheable", {timeout: 20_000}, async () => {
  const res = await fetch(`${server.base}/js/sse-transport.js`)
  const body = await res.text()
  assert.equal(res.status, 200)
  assert.equal(res.headers.get("content-type"), "text/javascript; charset=utf-8")
  assert.equal(res.headers.get("cache-control"), "public, max-age=300")
  assert.equal(body, fs.readFileSync(path.join(REPO_ROOT, "web", "sse-transport.js"), "utf8"))
  // an ES module exporting the transport
  const mod = await import(`data:text/javascript;base64,${Buffer.from(body).toString("base64")}`)
  assert.equal(typeof mod.SSETransport, "function")
  assert.equal(typeof mod.withFallback, "function")
  assert.equal(typeof mod.SSETransport.withFallback, "function")
  // revalidation
  const again = await fetch(`${server.base}/js/sse-transport.js`, {headers: {"if-none-match": res.headers.get("etag")}})
  await again.arrayBuffer()
  assert.equal(again.status, 304)
})

test("join sala:lobby over SSE: ok with mensajes, then estado_actual and presence_state with the user's meta", {timeout: 20_000}, async () => {
  const carlos = await openSSE(server, {name: "Carlos"})
  assert.ok(carlos.socket.conn instanceof SSETransport, "the socket does not use SSETransport")
  assert.equal(carlos.socket.conn.skipHeartbeat, false, "phoenix heartbeats are kept over SSE")
  const {channel, reply} = await carlos.join("sala:lobby")
  assert.ok(Array.isArray(reply.mensajes), `join reply has no mensajes list: ${JSON.stringify(reply)}`)

  const estado = await channel.rec.waitFor("estado_actual", (e) => e.usuarios?.some((u) => u.id === carlos.key))
  assert.deepEqual(estado.usuarios.find((u) => u.id === carlos.key), {id: carlos.key, nombre: "Carlos", estado: "activo"})
  const state = await channel.rec.waitFor("presence_state", (s) => s[carlos.key] !== undefined)
  const [meta] = state[carlos.key].metas
  assert.equal(state[carlos.key].metas.length, 1)
  assert.equal(meta.nombre, "Carlos")
  assert.equal(meta.estado, "activo")
  assert.match(meta.en_linea_desde, isoUtc)
  assert.equal(typeof meta.phx_ref, "string")
  // replies and pushes came down the stream, in phoenix's order
  const order = channel.rec.events.map((e) => e.event).filter((e) => ["phx_reply", "estado_actual", "presence_state"].includes(e))
  assert.deepEqual(order.slice(0, 3), ["phx_reply", "estado_actual", "presence_state"])
})

test("authToken (EventSource cannot set headers) goes as the token query parameter", {timeout: 20_000}, async () => {
  const userId = newUserId()
  const token = server.token(userId, "Tomás")
  const tomas = await openSSE(server, {userId, token, socketOpts: {params: {}, authToken: token}})
  const url = new URL(tomas.socket.conn.streamURL)
  assert.equal(url.pathname, "/socket/sse")
  assert.deepEqual(url.searchParams.getAll("token"), [token])
  assert.equal(url.searchParams.get("vsn"), "2.0.0")
  const {channel} = await tomas.join("sala:lobby")
  const state = await channel.rec.waitFor("presence_state", (s) => s[String(userId)] !== undefined)
  assert.equal(state[String(userId)].metas[0].nombre, "Tomás")
})

test("push/reply over SSE: ping echoes its payload, nuevo_mensaje is broadcast and replied, invalid is refused", {timeout: 20_000}, async () => {
  const ana = await openSSE(server, {name: "Ana"})
  const {channel} = await ana.join("sala:lobby")
  const payload = {texto: "¿qué tal?", n: 7, lista: [1, "dos", null, true], anidado: {a: {b: "c"}}}
  assert.deepEqual(await pushOk(channel, "ping", payload), payload)

  const text = `hola por SSE ${newRoomId("m")}`
  await pushOk(channel, "nuevo_mensaje", {contenido: text})
  const m = await channel.rec.waitFor("mensaje_recibido", (x) => x.contenido === text)
  assert.equal(m.autor, "Ana")

  const bad = await push(channel, "nuevo_mensaje", {contenido: "   "})
  assert.equal(bad.status, "error")
  assert.ok(bad.response.errors?.contenido, `no errors.contenido: ${JSON.stringify(bad.response)}`)

  // frames pushed in one tick go in one POST and keep their order
  const replies = await Promise.all(Array.from({length: 30}, (_, i) => pushOk(channel, "ping", {i})))
  assert.deepEqual(replies.map((r) => r.i), Array.from({length: 30}, (_, i) => i))
})

test("an SSE client and a LongPoll client in the lobby see each other's presence and messages", {timeout: 20_000}, async () => {
  const ana = await openSSE(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"}) // LongPoll
  assert.ok(beto.socket.conn instanceof LongPoll)
  const {channel: chA} = await ana.join("sala:lobby")
  await chA.rec.waitFor("presence_state", (s) => s[ana.key] !== undefined)
  const {channel: chB} = await beto.join("sala:lobby")

  const stateB = await chB.rec.waitFor("presence_state", (s) => s[beto.key] !== undefined)
  assert.equal(stateB[ana.key]?.metas[0].nombre, "Ana", `Beto's presence_state lacks Ana: ${JSON.stringify(stateB)}`)
  const diff = await chA.rec.waitFor("presence_diff", (d) => d.joins?.[beto.key])
  assert.equal(diff.joins[beto.key].metas[0].nombre, "Beto")

  const fromA = `de Ana (SSE) ${newRoomId("m")}`
  await pushOk(chA, "nuevo_mensaje", {contenido: fromA})
  const atB = await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === fromA)
  const atA = await chA.rec.waitFor("mensaje_recibido", (m) => m.contenido === fromA)
  assert.deepEqual(atA, atB)
  assert.equal(atB.autor, "Ana")

  const fromB = `de Beto (LongPoll) ${newRoomId("m")}`
  await pushOk(chB, "nuevo_mensaje", {contenido: fromB})
  assert.equal((await chA.rec.waitFor("mensaje_recibido", (m) => m.contenido === fromB)).autor, "Beto")

  await server.broadcast("sala:lobby", "anuncio", {mensaje: "para todos"})
  await chA.rec.waitFor("anuncio")
  await chB.rec.waitFor("anuncio")
  await sleep(200)
  for(const ch of [chA, chB]){
    assert.equal(ch.rec.all("mensaje_recibido").filter((m) => m.contenido === fromA || m.contenido === fromB).length, 2, "each message once")
  }
})

test("escribiendo over SSE and LongPoll: usuario_escribiendo reaches the other member only", {timeout: 20_000}, async () => {
  const ana = await openSSE(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const {channel: chA} = await ana.join(topic)
  const {channel: chB} = await beto.join(topic)

  pushNoReply(chA, "escribiendo", {})
  assert.deepEqual(await chB.rec.waitFor("usuario_escribiendo"), {user_id: ana.userId})
  pushNoReply(chB, "escribiendo", {})
  assert.deepEqual(await chA.rec.waitFor("usuario_escribiendo"), {user_id: beto.userId})

  await pushOk(chA, "ping", {})
  await pushOk(chB, "ping", {})
  await sleep(500)
  assert.deepEqual(chA.rec.all("usuario_escribiendo"), [{user_id: beto.userId}], "Ana got her own usuario_escribiendo")
  assert.deepEqual(chB.rec.all("usuario_escribiendo"), [{user_id: ana.userId}], "Beto got his own usuario_escribiendo")
})

test("phoenix.js Presence over SSE: join, estado update and leave of others (SSE and LongPoll)", {timeout: 30_000}, async () => {
  const ana = await openSSE(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const celia = await openSSE(server, {name: "Celia"})
  const {topic} = await memberRoom(server, [ana, beto, celia])

  const chA = ana.channel(topic)
  const presence = new Presence(chA)
  const joins = []
  const leaves = []
  presence.onJoin((key, current) => { if(!current){ joins.push(key) } })
  presence.onLeave((key, current) => { if(current.metas.length === 0){ leaves.push(key) } })
  await join(chA)
  await until(() => presence.list().length === 1, "Ana sees herself")

  const {channel: chB} = await beto.join(topic)
  const {channel: chC} = await celia.join(topic)
  await until(() => presence.state[beto.key] && presence.state[celia.key], "Ana sees Beto and Celia join")
  assert.deepEqual(joins.sort(), [ana.key, beto.key, celia.key].sort())

  await pushOk(chB, "estado", {estado: "ausente"})
  await until(() => presence.state[beto.key]?.metas[0].estado === "ausente", "Ana sees Beto ausente")
  assert.equal(presence.state[beto.key].metas.length, 1, "the update left the old meta behind")
  await pushOk(chC, "estado", {estado: "ausente"})
  await until(() => presence.state[celia.key]?.metas[0].estado === "ausente", "Ana sees Celia ausente")

  chB.leave()
  await until(() => !presence.state[beto.key], "Ana sees Beto leave")
  chC.leave()
  await flushed(celia.socket)
  await until(() => !presence.state[celia.key], "Ana sees Celia leave")
  assert.deepEqual(leaves.sort(), [beto.key, celia.key].sort())
  assert.deepEqual(presence.list((key) => key), [ana.key])
})

/**
 * Numbered broadcasts (and numbered pings) while the stream is cut or ended again and again:
 * each must arrive exactly once, in order, on the same session, without phoenix noticing.
 */
async function numberedAcrossDrops(srv, {count, every, socketUrl, minStreams}){
  let streams = 0 // session events seen by the client: one per (re)connected stream
  class CountingSSE extends SSETransport {}
  CountingSSE.EventSource = class extends EventSource {
    constructor(...args){
      super(...args)
      this.addEventListener("session", () => { streams++ })
    }
  }
  const ana = await openClient({...srv, socketUrl: socketUrl ?? srv.socketUrl}, {name: "Ana", socketOpts: {transport: CountingSSE}})
  const seen = watch(ana.socket)
  const conn = ana.socket.conn
  const {topic} = await memberRoom(srv, [ana])
  const chA = ana.channel(topic)
  let joins = 0
  chA.joinPush.receive("ok", () => { joins++ })
  await join(chA)

  const pings = []
  for(let n = 1; n <= count; n++){
    await srv.broadcast(topic, "numerado", {n})
    if(n % 5 === 0){ pings.push(pushOk(chA, "ping", {n}, 10_000)) }
    await sleep(every)
  }
  await chA.rec.waitFor("numerado", (p) => p.n === count, {timeout: 10_000})
  const replies = await Promise.all(pings)
  await sleep(300) // anything repeated would show up now
  const got = chA.rec.all("numerado").map((p) => p.n)
  assert.deepEqual(got, Array.from({length: count}, (_, i) => i + 1), "every message exactly once, in order")
  assert.deepEqual(replies.map((r) => r.n), Array.from({length: count / 5}, (_, i) => (i + 1) * 5))
  assert.ok(streams >= minStreams, `only ${streams} streams: the stream did not drop as planned`)
  assert.equal(ana.socket.conn, conn, "the socket replaced its transport")
  assert.equal(conn.sessionId !== null && conn.readyState, 1)
  assert.deepEqual(seen.closes, [], "phoenix saw the transport close")
  assert.deepEqual(seen.errors, [], "phoenix saw a transport error")
  assert.equal(joins, 1, "the channel rejoined")
  return {streams}
}

test("a stream cut mid-event by the network resumes exactly: no gap, no duplicate, same session", {timeout: 40_000}, async () => {
  const proxy = await proxyFor(server, {mode: "cut", cutAfter: 3})
  await numberedAcrossDrops(server, {count: 40, every: 20, socketUrl: proxy.socketUrl, minStreams: 5})
  assert.ok(proxy.stats.cuts >= 4, `${proxy.stats.cuts} cuts`)
})

test("streams ended by the server at --sse-max-lifetime resume exactly: no gap, no duplicate", {timeout: 40_000}, async () => {
  const short = await startSluice(["--sse-max-lifetime", "1s", "--sse-retry", "200ms"])
  try {
    await numberedAcrossDrops(short, {count: 60, every: 50, minStreams: 3})
  } finally {
    await closeAllClients()
    await short.stop()
  }
})

test("a session that expired while the stream was down: the socket reconnects, rejoins and works", {timeout: 30_000}, async () => {
  const proxy = await proxyFor(server, {mode: "pass"})
  const ana = await openSSE(via(server, proxy), {name: "Ana"})
  const seen = watch(ana.socket)
  const first = ana.socket.conn
  const sessionBefore = first.sessionId
  const {topic} = await memberRoom(server, [ana])
  const chA = ana.channel(topic)
  let joins = 0
  chA.joinPush.receive("ok", () => { joins++ })
  await join(chA)

  proxy.block() // the stream drops and EventSource cannot reconnect...
  // ...until the server let the session go: the stream's last poll kept it for up to one
  // heartbeat period, then --session-timeout, then the once-a-second sweep
  await sleep(HEARTBEAT_MS + SESSION_TIMEOUT_MS + 2000)
  proxy.mode = "pass"
  await until(() => joins === 2 && chA.isJoined(), "the channel rejoined on a new session", 10_000)
  assert.ok(seen.errors.includes(410), `no session-gone error: ${JSON.stringify(seen.errors)}`)
  assert.ok(seen.closes.some((c) => c.code === 3410), `closes: ${JSON.stringify(seen.closes)}`)
  assert.notEqual(ana.socket.conn, first)
  assert.ok(ana.socket.conn instanceof SSETransport)
  assert.notEqual(ana.socket.conn.sessionId, sessionBefore)
  assert.ok(proxy.stats.blocked > 0, "EventSource did not try to reconnect while blocked")
  await server.broadcast(topic, "despues", {ok: true})
  await chA.rec.waitFor("despues")
  assert.deepEqual(await pushOk(chA, "ping", {otra: "vez"}), {otra: "vez"})
})

test("POST /api/disconnect ends the SSE session: the stream says session_gone, phoenix.js reconnects and rejoins", {timeout: 30_000}, async () => {
  const ana = await openSSE(server, {name: "Ana"})
  const seen = watch(ana.socket)
  const first = ana.socket.conn
  const {topic} = await memberRoom(server, [ana])
  const chA = ana.channel(topic)
  let joins = 0
  chA.joinPush.receive("ok", () => { joins++ })
  await join(chA)

  const res = await server.api("POST", "/api/disconnect", {socket_id: `user_socket:${ana.userId}`})
  assert.ok(res.status >= 200 && res.status < 300, `${res.status} ${res.text}`)
  await until(() => joins === 2 && chA.isJoined(), "the channel rejoined", 10_000)
  assert.ok(seen.closes.some((c) => c.code === 3410), `closes: ${JSON.stringify(seen.closes)}`)
  assert.notEqual(ana.socket.conn, first)
  assert.notEqual(ana.socket.conn.sessionId, first.sessionId)
  assert.deepEqual(await pushOk(chA, "ping", {n: 3}), {n: 3})
})

test("a refused stream (bad token) is a transport error and phoenix keeps retrying", {timeout: 20_000}, async () => {
  const {Socket} = await import("phoenix")
  const socket = new Socket(server.socketUrl, {transport: SSETransport, params: {token: "not-a-token"}, reconnectAfterMs: () => 100})
  const seen = watch(socket)
  socket.connect()
  try {
    await until(() => seen.errors.length >= 2, "two failed attempts")
    assert.ok(!socket.isConnected())
    assert.ok(seen.closes.every((c) => c.code !== 1000), `a close with 1000: ${JSON.stringify(seen.closes)}`)
  } finally {
    socket.disconnect()
  }
})

test("withFallback keeps SSE where the stream works", {timeout: 20_000}, async () => {
  const storage = memoryStorage()
  const Transport = SSETransport.withFallback(LongPoll, {fallbackMs: 1500, storage})
  const ana = await openClient(server, {name: "Ana", socketOpts: {transport: Transport}})
  assert.ok(ana.socket.conn.transport instanceof SSETransport)
  const {channel} = await ana.join("sala:lobby")
  assert.deepEqual(await pushOk(channel, "ping", {n: 1}), {n: 1})
  await sleep(1600) // past fallbackMs: nothing changes
  assert.ok(ana.socket.conn.transport instanceof SSETransport)
  assert.equal(storage.getItem("sluice:sse-fallback"), null)
})

test("withFallback: behind a proxy that holds the stream, the socket uses ResilientLongPoll within fallbackMs, and remembers it for rememberMs", {timeout: 30_000}, async () => {
  const fallbackMs = 1000
  const rememberMs = 2000
  const proxy = await proxyFor(server, {mode: "hold"})
  const storage = memoryStorage()
  const Transport = SSETransport.withFallback({fallbackMs, rememberMs, storage})
  const started = Date.now()
  const ana = await openClient(via(server, proxy), {name: "Ana", socketOpts: {transport: Transport}})
  const openedAfter = Date.now() - started
  assert.ok(proxy.stats.streams >= 1, "SSE was not tried")
  assert.ok(ana.socket.conn.transport instanceof ResilientLongPoll, "the socket is not on ResilientLongPoll")
  assert.ok(openedAfter >= fallbackMs - 50 && openedAfter < fallbackMs + 1500, `opened after ${openedAfter} ms`)
  const saved = JSON.parse(storage.getItem("sluice:sse-fallback"))
  assert.equal(saved.transport, "LongPoll")
  assert.ok(saved.until > Date.now() && saved.until <= Date.now() + rememberMs, `remembered until ${saved.until}`)

  const {channel, reply} = await ana.join("sala:lobby")
  assert.ok(Array.isArray(reply.mensajes))
  assert.deepEqual(await pushOk(channel, "ping", {n: 1}), {n: 1})
  await channel.rec.waitFor("presence_state", (s) => s[ana.key] !== undefined)

  // a later connection in this "tab" goes straight to long-polling...
  const streams = proxy.stats.streams
  const t1 = Date.now()
  const beto = await openClient(via(server, proxy), {name: "Beto", socketOpts: {transport: Transport}})
  assert.ok(Date.now() - t1 < fallbackMs, "the remembered fallback waited for SSE")
  assert.ok(beto.socket.conn.transport instanceof ResilientLongPoll)
  assert.equal(proxy.stats.streams, streams, "SSE was tried again")
  // ...until rememberMs passed: then SSE is tried again (not remembered for good)
  await sleep(saved.until - Date.now() + 50)
  const celia = await openClient(via(server, proxy), {name: "Celia", socketOpts: {transport: Transport}})
  assert.ok(proxy.stats.streams > streams, "SSE was not tried again after rememberMs")
  assert.ok(celia.socket.conn.transport instanceof ResilientLongPoll, "the held stream did not make it fall back again")
})

test("withFallback with phoenix's own LongPoll: behind a proxy that holds the stream, the socket uses it", {timeout: 30_000}, async () => {
  const proxy = await proxyFor(server, {mode: "hold"})
  const Transport = withFallback(LongPoll, {fallbackMs: 1000, storage: memoryStorage()})
  const ana = await openClient(via(server, proxy), {name: "Ana", socketOpts: {transport: Transport}})
  assert.ok(ana.socket.conn.transport instanceof LongPoll, "the socket is not on LongPoll")
  const {channel} = await ana.join("sala:lobby")
  assert.deepEqual(await pushOk(channel, "ping", {n: 1}), {n: 1})
})

test("withFallback: a dropped first stream is not evidence: SSE is tried again and kept, nothing remembered", {timeout: 30_000}, async () => {
  const proxy = await proxyFor(server, {mode: "block"})
  const storage = memoryStorage()
  const Transport = SSETransport.withFallback({fallbackMs: 3000, storage})
  const opening = openClient(via(server, proxy), {name: "Ana", socketOpts: {transport: Transport}})
  await until(() => proxy.stats.blocked >= 1, "the first stream was dropped")
  proxy.mode = "pass"
  const ana = await opening
  assert.ok(ana.socket.conn.transport instanceof SSETransport, "the socket fell back after one dropped stream")
  assert.equal(storage.getItem("sluice:sse-fallback"), null)
  const {channel} = await ana.join("sala:lobby")
  assert.deepEqual(await pushOk(channel, "ping", {n: 1}), {n: 1})
})

test("withFallback with phoenix's LongPoll: heartbeats that arrive batched after the stream opened reconnect the socket over LongPoll", {timeout: 30_000}, async () => {
  const fast = await startSluice(["--sse-heartbeat", "250ms"])
  try {
    // a proxy that forwards the first 1.5 s of each stream, then flushes every 1.5 s
    const proxy = await proxyFor(fast, {mode: "batch", passMs: 1500, flushMs: 1500})
    class Probe extends SSETransport {
      static lateMs = 700
      static probeHeartbeats = 20
    }
    const storage = memoryStorage()
    const ana = await openClient(via(fast, proxy), {name: "Ana", socketOpts: {transport: Probe.withFallback(LongPoll, {fallbackMs: 1000, storage})}})
    const seen = watch(ana.socket)
    assert.ok(ana.socket.conn.transport instanceof Probe, "the stream did not open over SSE")
    // phoenix's LongPoll cannot take a session over: a new session
    const {channel} = await ana.join("sala:lobby")
    await until(() => ana.socket.conn?.transport instanceof LongPoll && channel.isJoined(), "switch to LongPoll and rejoin", 8000)
    assert.ok(seen.closes.some((c) => c.code === 4000), `closes: ${JSON.stringify(seen.closes)}`)
    assert.equal(JSON.parse(storage.getItem("sluice:sse-fallback")).reason, "buffering")
    assert.deepEqual(await pushOk(channel, "ping", {n: 2}), {n: 2})
  } finally {
    await closeAllClients()
    await Promise.all(proxies.splice(0).map((p) => p.stop()))
    await fast.stop()
  }
})

test("withFallback: heartbeats that arrive batched after the stream opened hand the same session over to ResilientLongPoll: no reconnect, nothing lost or repeated", {timeout: 40_000}, async () => {
  const fast = await startSluice(["--sse-heartbeat", "250ms"])
  try {
    const proxy = await proxyFor(fast, {mode: "batch", passMs: 1500, flushMs: 1500})
    class Probe extends SSETransport {
      static lateMs = 700
      static probeHeartbeats = 20
    }
    const storage = memoryStorage()
    const ana = await openClient(via(fast, proxy), {name: "Ana", socketOpts: {transport: Probe.withFallback({fallbackMs: 1000, storage})}})
    const seen = watch(ana.socket)
    const conn = ana.socket.conn
    const sse = conn.transport
    assert.ok(sse instanceof Probe, "the stream did not open over SSE")
    const {topic} = await memberRoom(fast, [ana])
    const chA = ana.channel(topic)
    let joins = 0
    chA.joinPush.receive("ok", () => { joins++ })
    await join(chA)

    // numbered messages before, during and after the switch
    let n = 0
    let after = 0
    while(after < 20 && n < 400){
      await fast.broadcast(topic, "numerado", {n: ++n})
      if(n % 10 === 0){ await pushOk(chA, "ping", {n}, 10_000) }
      if(conn.transport instanceof ResilientLongPoll){ after++ }
      await sleep(40)
    }
    assert.ok(conn.transport instanceof ResilientLongPoll, "no switch to long-polling")
    await chA.rec.waitFor("numerado", (p) => p.n === n, {timeout: 10_000})
    await sleep(300)
    assert.deepEqual(chA.rec.all("numerado").map((p) => p.n), Array.from({length: n}, (_, i) => i + 1), "every message exactly once, in order")
    assert.equal(ana.socket.conn, conn, "phoenix replaced its transport")
    assert.deepEqual(seen.closes, [], "phoenix saw a close")
    assert.deepEqual(seen.errors, [], "phoenix saw an error")
    assert.equal(joins, 1, "the channel rejoined")
    assert.ok(conn.transport.token.startsWith(sse.sessionId), "the long-poll does not continue the SSE session")
    assert.equal(JSON.parse(storage.getItem("sluice:sse-fallback")).reason, "buffering")
    assert.deepEqual(await pushOk(chA, "ping", {last: true}), {last: true})
  } finally {
    await closeAllClients()
    await Promise.all(proxies.splice(0).map((p) => p.stop()))
    await fast.stop()
  }
})

test("POSTs carry the session credential in X-Sluice-Session, and no URL carries it", {timeout: 20_000}, async () => {
  // a server that sends no credential yet gets a stand-in, which it ignores
  let credential = null
  const proxy = await startHostileProxy([server.base], {log: true, rewrite: (text) => text.replace(
    /^(event: session\nid: [^\n]*\ndata: )(\{[^\n]*\})$/m, (_, head, json) => {
      const info = JSON.parse(json)
      info.credential ??= `${info.session}${"5e55"}${"0".repeat(28)}`
      credential = info.credential
      return head + JSON.stringify(info)
    })})
  try {
    const ana = await openSSE({...server, socketUrl: proxy.socketUrl}, {name: "Ana"})
    const {channel} = await ana.join("sala:lobby")
    for(let i = 0; i < 3; i++){ assert.deepEqual(await pushOk(channel, "ping", {i}), {i}) }
    assert.ok(credential, "no session event went through the proxy")
    assert.equal(ana.socket.conn.credential, credential)
    const posts = proxy.log.filter((r) => r.method === "POST" && r.url.startsWith("/socket/sse"))
    assert.ok(posts.length >= 4, `${posts.length} POSTs`)
    assert.deepEqual(posts.filter((r) => r.session !== credential), [], "a POST without the credential header")
    assert.deepEqual(proxy.log.filter((r) => r.url.includes(credential)), [], "the credential travelled in a URL")
  } finally {
    await closeAllClients()
    await proxy.close()
  }
})
