// The module's WebSocket-first fallback in headless Chromium (the browser's own WebSocket and
// EventSource, driven by playwright-core): a page served through a proxy (ws-helpers.mjs'
// startUpgradeProxy) imports the phoenix.js and the sse-transport.js the binary serves and runs
// the seed scenario with `transport: SSETransport.withFallback({webSocket: true})`: join
// sala:lobby, see a phoenix.js client in Node in the presence list and be seen by it, messages
// both ways. Through a proxy that passes everything the page stays on WebSocket and remembers
// nothing; behind one that answers the upgrade 400 it ends on SSE; behind one that also buffers
// or refuses SSE streams it ends on ResilientLongPoll. Each time the socket opens once (the
// switches happen before phoenix.js sees an open transport, so nothing it sends is lost), and a
// reload of the page goes straight to what worked, trying nothing else on the proxy.
//
// The windows are generous (the machine may be loaded): a switch is driven by the proxy's
// refusal or by the window ending, and the test waits on events, not on time.
//
// Needs Debian's chromium at /usr/bin/chromium (or CHROMIUM_PATH). Without it the test is
// skipped, except in CI (CI=true), where it fails.

import {test} from "node:test"
import assert from "node:assert/strict"
import {newRoomId} from "./helpers.mjs"
import {useChromium} from "./chromium-helpers.mjs"

// the WebSocket's and the SSE stream's windows to open and echo a heartbeat
const WINDOW_MS = 6000
const STORAGE_KEY = "sluice:sse-fallback"

const suite = useChromium("sluice-ws-fallback-chromium-")

/**
 * In the page: phoenix.js on withFallback({webSocket: true}), the seed scenario with `peer` (a
 * client in Node), and what the socket did. Runs in Chromium, so only what it gets as arguments.
 */
async function scenarioInPage({token, userKey, peerKey, text, peerText, windowMs, storageKey}){
  const {Socket, Presence} = await import("/js/phoenix.mjs")
  const {SSETransport, ResilientLongPoll} = await import("/js/sse-transport.js")
  const wait = (what, ms, f) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)
    f((v) => { clearTimeout(timer); resolve(v) }, reject)
  })
  const nameOf = (t) => t instanceof WebSocket ? "WebSocket" : t instanceof SSETransport ? "SSE" : t instanceof ResilientLongPoll ? "ResilientLongPoll" : String(t && t.constructor && t.constructor.name)
  const rememberedAtStart = sessionStorage.getItem(storageKey)
  const Transport = SSETransport.withFallback({webSocket: true, webSocketMs: windowMs, fallbackMs: windowMs})
  const socket = new Socket("/socket", {transport: Transport, params: {token}, timeout: 10000})
  const opens = []
  const errors = []
  socket.onOpen(() => opens.push(nameOf(socket.conn.transport)))
  socket.onError(() => errors.push(nameOf(socket.conn && socket.conn.transport)))
  // what the socket started on, at once (the remembered choice, or the WebSocket)
  socket.connect()
  const startedOn = nameOf(socket.conn.transport)
  await wait("open", 2 * windowMs + 10000, (resolve) => socket.onOpen(resolve))

  const sala = socket.channel("sala:lobby", {})
  const presence = new Presence(sala)
  const peerSeen = wait("the peer in the presence list", 10000, (resolve) => presence.onSync(() => {
    if(presence.list((key) => key).includes(peerKey)){ resolve() }
  }))
  const fromPeer = wait("the peer's message", 15000, (resolve) => sala.on("mensaje_recibido", (m) => { if(m.contenido === peerText){ resolve(m) } }))
  const echoed = wait("own message echoed", 10000, (resolve) => sala.on("mensaje_recibido", (m) => { if(m.contenido === text){ resolve(m) } }))
  const reply = await wait("join", 10000, (resolve, reject) => sala.join().receive("ok", resolve).receive("error", reject).receive("timeout", () => reject(new Error("join timeout"))))
  await peerSeen
  await wait("push reply", 10000, (resolve, reject) => sala.push("nuevo_mensaje", {contenido: text}).receive("ok", resolve).receive("error", reject))
  const mine = await echoed
  // tell Node we are ready for the peer's message, then wait for it
  window.__sluiceReady = true
  const theirs = await fromPeer
  const out = {
    startedOn, opens, errors, history: Array.isArray(reply.mensajes), autor: mine.autor, peerAutor: theirs.autor,
    final: nameOf(socket.conn.transport), checked: socket.conn.checked, reason: socket.conn.reason,
    rememberedAtStart, remembered: sessionStorage.getItem(storageKey),
    selfInPresence: presence.list((key) => key).includes(userKey),
  }
  await new Promise((resolve) => socket.disconnect(resolve))
  return out
}

const cases = [
  {name: "passes the upgrade and streams", mode: "pass", sse: "pass", ends: "WebSocket"},
  {name: "answers the upgrade 400", mode: "refuse", sse: "pass", ends: "SSE"},
  {name: "answers the upgrade 400 and buffers SSE streams", mode: "refuse", sse: "buffer", ends: "ResilientLongPoll"},
  {name: "answers the upgrade 400 and SSE streams 502", mode: "refuse", sse: "refuse", ends: "ResilientLongPoll"},
]

for(const c of cases){
  test(`Chromium, withFallback({webSocket: true}), behind a proxy that ${c.name}: the seed scenario completes on ${c.ends}, and a reload goes straight to it`, {timeout: 120_000}, async (t) => {
    if(!suite.needChromium(t)){ return }
    // a page of the proxy's origin, so that "/socket" and "/js" go through the proxy
    const {proxy, userId, token, beto, chB, page} = await suite.openProxiedPage({mode: c.mode, sse: c.sse})
    try {
      const run = async (label) => {
        const text = `desde Chromium ${newRoomId("m")}`
        const peerText = `desde Node ${newRoomId("m")}`
        const since = chB.rec.mark()
        const inPage = page.evaluate(scenarioInPage, {token, userKey: String(userId), peerKey: beto.key, text, peerText, windowMs: WINDOW_MS, storageKey: STORAGE_KEY})
        // the page sees Beto; Beto sees the page join, and its message
        await chB.rec.waitFor("presence_diff", (d) => d.joins && d.joins[String(userId)] !== undefined, {since, timeout: 2 * WINDOW_MS + 20000})
        await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === text, {since, timeout: 20000})
        await page.waitForFunction(() => window.__sluiceReady === true, null, {timeout: 20000})
        await new Promise((resolve, reject) => chB.push("nuevo_mensaje", {contenido: peerText}).receive("ok", resolve).receive("error", reject))
        const r = await inPage
        assert.equal(r.history, true, `${label}: the join reply has no mensajes`)
        assert.equal(r.autor, "Navegadora")
        assert.equal(r.peerAutor, "Beto")
        assert.equal(r.selfInPresence, true, `${label}: the page is not in its own presence list`)
        assert.deepEqual(r.opens, [c.ends], `${label}: the socket opened ${JSON.stringify(r.opens)} (errors ${JSON.stringify(r.errors)}, reason ${r.reason})`)
        assert.equal(r.final, c.ends)
        assert.equal(r.checked, true)
        assert.deepEqual(r.errors, [], `${label}: phoenix.js saw transport errors`)
        return r
      }

      const first = await run("first load")
      assert.equal(first.rememberedAtStart, null)
      assert.equal(first.startedOn, "WebSocket", "the first load did not try the WebSocket first")
      const stats = {...proxy.stats}
      if(c.ends === "WebSocket"){
        assert.equal(first.remembered, null, "a working WebSocket left a fallback in sessionStorage")
        assert.equal(stats.passed, 1)
        assert.equal(stats.streams + stats.polls, 0, `SSE or LongPoll was tried: ${JSON.stringify(stats)}`)
      } else {
        const saved = JSON.parse(first.remembered)
        const transport = c.ends === "SSE" ? "SSE" : "LongPoll"
        assert.equal(saved.transport, transport, `remembered ${first.remembered}`)
        assert.ok(saved.until > Date.now(), `remembered until ${saved.until}`)
        assert.equal(stats.refused, 1)
        assert.ok(stats.streams >= 1, "SSE was not tried")
        if(c.ends === "SSE"){ assert.equal(stats.polls, 0, "LongPoll was tried") } else { assert.ok(stats.polls >= 1) }
      }

      // a reload of the tab goes straight to what worked (sessionStorage survives it)
      await page.reload()
      const again = await run("after a reload")
      assert.equal(again.startedOn, c.ends, "the reload did not start on the remembered transport")
      assert.equal(again.rememberedAtStart, first.remembered)
      if(c.ends === "WebSocket"){
        assert.equal(proxy.stats.passed, 2)
        assert.equal(proxy.stats.streams + proxy.stats.polls, 0)
      } else {
        assert.equal(proxy.stats.refused, stats.refused, "the reload tried the WebSocket again")
        if(c.ends === "ResilientLongPoll"){ assert.equal(proxy.stats.streams, stats.streams, "the reload tried SSE again") }
      }
    } finally {
      await page.close()
    }
  })
}
