// phoenix.js's longPollFallbackMs in headless Chromium (the browser's own WebSocket, driven by
// playwright-core): a page served through a proxy (ws-helpers.mjs' startUpgradeProxy) imports the
// phoenix.js the binary serves (/js/phoenix.mjs) and runs the seed scenario with
// `new Socket("/socket", {params: {token}, longPollFallbackMs})`: join sala:lobby, push
// nuevo_mensaje, see it echoed and seen by a phoenix.js client in Node. Behind a proxy that answers
// the upgrade 400, or swallows it, phoenix.js falls back to LongPoll within its window, remembers
// it in sessionStorage, and the scenario completes; through a proxy that passes the upgrade it
// stays on WebSocket and remembers nothing.
//
// Needs Debian's chromium at /usr/bin/chromium (or CHROMIUM_PATH). Without it the test is
// skipped, except in CI (CI=true), where it fails.

import {test} from "node:test"
import assert from "node:assert/strict"
import {newRoomId} from "./helpers.mjs"
import {useChromium} from "./chromium-helpers.mjs"

const FALLBACK_MS = 1500

const suite = useChromium("sluice-ws-chromium-")

/**
 * In the page: phoenix.js with longPollFallbackMs, the seed scenario, and what transport it ended
 * on. Runs in Chromium, so only what it gets as arguments.
 */
async function scenarioInPage({token, text, fallbackMs}){
  const {Socket, LongPoll} = await import("/js/phoenix.mjs")
  const wait = (what, ms, f) => new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timeout: ${what}`)), ms)
    f((v) => { clearTimeout(timer); resolve(v) }, reject)
  })
  const socket = new Socket("/socket", {params: {token}, longPollFallbackMs: fallbackMs})
  const started = performance.now()
  const transports = []
  socket.onOpen(() => transports.push(socket.transport === LongPoll ? "LongPoll" : socket.transport.name))
  await wait("open", fallbackMs + 8000, (resolve) => { socket.onOpen(resolve); socket.connect() })
  const openedAfterMs = performance.now() - started
  const sala = socket.channel("sala:lobby", {})
  const echoed = wait("mensaje_recibido", 8000, (resolve) => sala.on("mensaje_recibido", (m) => { if(m.contenido === text){ resolve(m) } }))
  const reply = await wait("join", 8000, (resolve, reject) => sala.join().receive("ok", resolve).receive("error", reject))
  await wait("push reply", 8000, (resolve, reject) => sala.push("nuevo_mensaje", {contenido: text}).receive("ok", resolve).receive("error", reject))
  const m = await echoed
  // past the fallback window and its heartbeat check: the transport is final
  await new Promise((resolve) => setTimeout(resolve, fallbackMs + 500))
  const out = {
    transports, openedAfterMs, history: Array.isArray(reply.mensajes), autor: m.autor,
    final: socket.transport === LongPoll ? "LongPoll" : socket.transport.name,
    remembered: sessionStorage.getItem("phx:fallback:LongPoll"),
  }
  await new Promise((resolve) => socket.disconnect(resolve))
  return out
}

for(const mode of ["refuse", "hold", "pass"]){
  const what = {refuse: "answers the upgrade 400", hold: "swallows the upgrade", pass: "passes the upgrade"}[mode]
  test(`Chromium, longPollFallbackMs ${FALLBACK_MS}, behind a proxy that ${what}: ` +
    (mode === "pass" ? "phoenix.js stays on WebSocket" : "phoenix.js falls back to LongPoll within its window and the scenario completes"), {timeout: 40_000}, async (t) => {
    if(!suite.needChromium(t)){ return }
    // a page of the proxy's origin, so that "/socket" goes through the proxy
    const {proxy, token, chB, page} = await suite.openProxiedPage({mode})
    try {
      const text = `desde Chromium ${newRoomId("m")}`
      const r = await page.evaluate(scenarioInPage, {token, text, fallbackMs: FALLBACK_MS})
      assert.equal(r.history, true, "the join reply has no mensajes")
      assert.equal(r.autor, "Navegadora")
      await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === text)
      if(mode === "pass"){
        assert.deepEqual(r.transports, ["WebSocket"], `phoenix.js opened ${JSON.stringify(r.transports)}`)
        assert.equal(r.final, "WebSocket")
        assert.equal(r.remembered, null)
        assert.equal(proxy.stats.passed, 1)
        return
      }
      assert.deepEqual(r.transports, ["LongPoll"], `phoenix.js opened ${JSON.stringify(r.transports)}`)
      assert.equal(r.final, "LongPoll")
      assert.equal(r.remembered, "true", "the fallback is not remembered in sessionStorage")
      assert.equal(mode === "refuse" ? proxy.stats.refused : proxy.stats.held, 1)
      // refused: at once; swallowed: when the window ends (plus the first poll)
      assert.ok(r.openedAfterMs < FALLBACK_MS + 3000, `LongPoll opened after ${Math.round(r.openedAfterMs)} ms`)
      if(mode === "hold"){ assert.ok(r.openedAfterMs >= FALLBACK_MS - 50, `fell back after ${Math.round(r.openedAfterMs)} ms, before the window`) }
      // the tab remembers: the next socket goes straight to LongPoll, nothing is tried on the proxy
      const again = await page.evaluate(async () => {
        const {Socket, LongPoll} = await import("/js/phoenix.mjs")
        const s = new Socket("/socket", {params: {token: "x"}, longPollFallbackMs: 1500})
        s.connect()
        const picked = s.transport === LongPoll ? "LongPoll" : s.transport.name
        s.disconnect()
        return picked
      })
      assert.equal(again, "LongPoll")
      assert.equal(proxy.stats.refused + proxy.stats.held, 1, "the remembered fallback tried the WebSocket again")
    } finally {
      await page.close()
    }
  })
}
