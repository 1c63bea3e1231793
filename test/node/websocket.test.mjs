// Phoenix's WebSocket transport (/socket/websocket) with the unmodified phoenix.js and the npm ws
// client, beyond the suites that ws-*.test.mjs run over it: phoenix.js's default configuration,
// authToken's subprotocol entry, refusals before the upgrade, the close when a session is ended,
// /metrics, and longPollFallbackMs behind a proxy that refuses or swallows the upgrade.

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import {Socket, LongPoll} from "phoenix"
import {SHORT, openClient, closeAllClients, join, pushOk, until, newUserId, newRoomId} from "./helpers.mjs"
import {startSluice, memoryStorage} from "./sse-helpers.mjs"
import {WebSocket, startUpgradeProxy} from "./ws-helpers.mjs"

const GOOD_ORIGIN = "https://good.example"
let server
const proxies = []
before(async () => { server = await startSluice(["--allowed-origins", "//good.example"]) })
afterEach(async () => {
  await closeAllClients()
  await Promise.all(proxies.splice(0).map((p) => p.stop()))
})
after(async () => { await closeAllClients(); await server?.stop() })

const wsUrl = (srv, query) => `${srv.base.replace(/^http/, "ws")}/socket/websocket?${query}`

/** Opens a ws WebSocket and resolves how the upgrade went: {status, body} or {open: true}. */
function upgrade(url, opts = {}){
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts)
    ws.on("open", () => { ws.close(); resolve({open: true, protocol: ws.protocol}) })
    ws.on("unexpected-response", (req, res) => {
      let text = ""
      res.on("data", (d) => { text += d })
      res.on("end", () => {
        let body
        try { body = JSON.parse(text) } catch { body = text }
        resolve({status: res.statusCode, body, headers: res.headers})
        req.destroy()
      })
    })
    ws.on("error", () => {})
  })
}

/** Scrapes /metrics and returns the value of the sample `name{labels}` (0 if absent). */
async function metric(srv, sample){
  const text = await (await fetch(`${srv.base}/metrics`)).text()
  const line = text.split("\n").find((l) => l.startsWith(sample + " "))
  return line ? Number(line.split(" ").pop()) : 0
}

test("phoenix.js's default configuration, new Socket(\"/socket\", {params: {token}}), opens /socket/websocket and runs the lobby scenario", {timeout: 20_000}, async () => {
  // what a browser has: a global WebSocket (Node 20 has none, so the npm ws for this test)
  globalThis.WebSocket = WebSocket
  try {
    const ana = await openClient(server, {name: "Ana", socketOpts: {transport: undefined}})
    assert.equal(ana.socket.transport, WebSocket, "phoenix.js did not pick the global WebSocket")
    assert.ok(ana.socket.conn instanceof WebSocket)
    assert.match(ana.socket.conn.url, /\/socket\/websocket\?token=.+&vsn=2\.0\.0$/)
    const {channel, reply} = await ana.join("sala:lobby")
    assert.ok(Array.isArray(reply.mensajes))
    const estado = await channel.rec.waitFor("estado_actual", (e) => e.usuarios?.some((u) => u.id === ana.key))
    assert.deepEqual(estado.usuarios.find((u) => u.id === ana.key), {id: ana.key, nombre: "Ana", estado: "activo"})
    await channel.rec.waitFor("presence_state", (s) => s[ana.key]?.metas[0].nombre === "Ana")
    const text = `hola por WebSocket ${newRoomId("m")}`
    await pushOk(channel, "nuevo_mensaje", {contenido: text})
    const m = await channel.rec.waitFor("mensaje_recibido", (x) => x.contenido === text)
    assert.equal(m.autor, "Ana")
    // phoenix.js's heartbeat is answered (socket.ping measures the round trip)
    const rtt = await new Promise((resolve) => ana.socket.ping(resolve))
    assert.ok(rtt >= 0)
  } finally {
    delete globalThis.WebSocket
  }
})

test("authToken goes in the Sec-WebSocket-Protocol entry, never in the URL; Sluice answers the phoenix subprotocol only", {timeout: 20_000}, async () => {
  const userId = newUserId()
  const token = server.token(userId, "Tomás")
  const tomas = await openClient(server, {userId, token, socketOpts: {transport: WebSocket, params: {}, authToken: token}})
  assert.equal(tomas.socket.conn.protocol, "phoenix")
  assert.ok(!tomas.socket.conn.url.includes(token.slice(0, 20)), "the token is in the URL")
  const {channel} = await tomas.join("sala:lobby")
  const state = await channel.rec.waitFor("presence_state", (s) => s[String(userId)] !== undefined)
  assert.equal(state[String(userId)].metas[0].nombre, "Tomás")
})

test("a refused connect is an HTTP answer with a JSON error before any upgrade: 403 for a bad token, vsn or Origin, 400 for a request that is not an upgrade", {timeout: 20_000}, async () => {
  const token = server.token(newUserId(), "Rita")
  const refusals = [
    ["no token", wsUrl(server, "vsn=2.0.0"), {}],
    ["a forged token", wsUrl(server, `vsn=2.0.0&token=${token}x`), {}],
    ["vsn 3.0.0", wsUrl(server, `vsn=3.0.0&token=${token}`), {}],
    ["an Origin not in --allowed-origins", wsUrl(server, `vsn=2.0.0&token=${token}`), {origin: "https://evil.example"}],
  ]
  for(const [what, url, opts] of refusals){
    const r = await upgrade(url, opts)
    assert.equal(r.status, 403, `${what}: ${JSON.stringify(r)}`)
    assert.equal(r.body.status, 403, `${what}: ${JSON.stringify(r.body)}`)
    assert.ok(typeof r.body.error === "string" && r.body.error.length > 0, `${what}: no error string`)
  }
  assert.deepEqual(await upgrade(wsUrl(server, `vsn=2.0.0&token=${token}`), {origin: GOOD_ORIGIN}), {open: true, protocol: ""})
  const plain = await fetch(`${server.base}/socket/websocket?vsn=2.0.0&token=${token}`)
  const body = await plain.json()
  assert.equal(plain.status, 400)
  assert.match(body.error, /WebSocket/)

  // phoenix.js with a forged token never opens, and keeps retrying (as against Phoenix)
  const socket = new Socket(server.socketUrl, {transport: WebSocket, params: {token: token + "x"}, reconnectAfterMs: () => 50})
  let errors = 0
  let opened = false
  socket.onError(() => { errors++ })
  socket.onOpen(() => { opened = true })
  socket.connect()
  await until(() => errors >= 2, "phoenix.js retries a refused connect")
  socket.disconnect()
  assert.equal(opened, false)
})

test("/api/disconnect closes the user's WebSocket with 1001; phoenix.js reconnects and rejoins by itself", {timeout: 20_000}, async () => {
  const uid = newUserId()
  const carlos = await openClient(server, {userId: uid, name: "Carlos", socketOpts: {transport: WebSocket}})
  const ch = carlos.channel("sala:lobby")
  let okJoins = 0
  ch.joinPush.receive("ok", () => { okJoins++ })
  await join(ch)
  const res = await server.api("POST", "/api/disconnect", {socket_id: `user_socket:${uid}`})
  assert.equal(res.status, 200, res.text)
  await until(() => carlos.transportCloses.length > 0, "the server closes Carlos' socket")
  assert.equal(carlos.transportCloses[0].code, 1001)
  await until(() => okJoins >= 2 && ch.isJoined(), "Carlos' channel rejoined", SHORT)
  assert.deepEqual(await pushOk(ch, "ping", {otra: "vez"}), {otra: "vez"})
})

test("/metrics counts WebSocket connections, frames in and out, and sessions ended by a close", {timeout: 20_000}, async () => {
  const open = 'sluice_open_requests{transport="websocket"}'
  const inFrames = 'sluice_messages_in_total{transport="websocket"}'
  const replies = 'sluice_messages_out_total{kind="reply",transport="websocket"}'
  const closed = 'sluice_sessions_ended_total{reason="closed"}'
  const before = {open: await metric(server, open), in: await metric(server, inFrames), replies: await metric(server, replies), closed: await metric(server, closed)}
  const ana = await openClient(server, {name: "Ana", socketOpts: {transport: WebSocket}})
  const {channel} = await ana.join("sala:lobby")
  await pushOk(channel, "ping", {n: 1})
  assert.equal(await metric(server, open), before.open + 1)
  assert.ok(await metric(server, inFrames) >= before.in + 2, "frames in")
  assert.ok(await metric(server, replies) >= before.replies + 2, "replies out")
  await closeAllClients()
  const deadline = Date.now() + SHORT
  while(Date.now() < deadline && (await metric(server, open)) !== before.open){ await new Promise((r) => setTimeout(r, 50)) }
  assert.equal(await metric(server, open), before.open, "the closed socket is still counted open")
  assert.equal(await metric(server, closed), before.closed + 1, "its session did not end as closed")
})

for(const mode of ["refuse", "hold"]){
  test(`longPollFallbackMs: behind a proxy that ${mode === "refuse" ? "answers the upgrade 400" : "swallows the upgrade"}, phoenix.js falls back to LongPoll, remembers it, and the scenario completes`, {timeout: 30_000}, async () => {
    const proxy = await startUpgradeProxy(server.base, {mode})
    proxies.push(proxy)
    const storage = memoryStorage()
    const srv = {...server, socketUrl: proxy.socketUrl}
    const started = Date.now()
    const ana = await openClient(srv, {name: "Ana", socketOpts: {transport: WebSocket, longPollFallbackMs: 500, sessionStorage: storage}})
    assert.ok(ana.socket.conn instanceof LongPoll, "phoenix.js did not fall back to LongPoll")
    assert.ok(Date.now() - started < SHORT)
    assert.equal(storage.getItem("phx:fallback:LongPoll"), "true")
    assert.equal(mode === "refuse" ? proxy.stats.refused : proxy.stats.held, 1)
    const beto = await openClient(server, {name: "Beto", socketOpts: {transport: WebSocket}})
    const {channel: chA} = await ana.join("sala:lobby")
    const {channel: chB} = await beto.join("sala:lobby")
    await chA.rec.waitFor("presence_diff", (d) => d.joins?.[beto.key])
    const text = `a pesar del proxy ${newRoomId("m")}`
    await pushOk(chA, "nuevo_mensaje", {contenido: text})
    await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === text)
  })
}

test("longPollFallbackMs: without such a proxy phoenix.js stays on WebSocket and remembers nothing", {timeout: 20_000}, async () => {
  const proxy = await startUpgradeProxy(server.base, {mode: "pass"})
  proxies.push(proxy)
  const storage = memoryStorage()
  const ana = await openClient({...server, socketUrl: proxy.socketUrl}, {name: "Ana", socketOpts: {transport: WebSocket, longPollFallbackMs: 500, sessionStorage: storage}})
  const {channel} = await ana.join("sala:lobby")
  await pushOk(channel, "ping", {})
  await new Promise((r) => setTimeout(r, 1000)) // past the fallback window and its heartbeat check
  assert.ok(ana.socket.conn instanceof WebSocket, "phoenix.js left the WebSocket")
  assert.equal(storage.getItem("phx:fallback:LongPoll"), null)
  assert.equal(proxy.stats.passed, 1)
})
