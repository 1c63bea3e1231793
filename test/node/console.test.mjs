// The debug console (web/console.html, served at /) in headless Chromium, driven by
// playwright-core: over each transport it connects with a token, joins sala:lobby, pushes a
// message and sees it echoed in the raw frame log with an ok reply, and shows the live presence
// of the lobby (itself, then a second user connected from Node with phoenix.js, who then
// leaves). Over SSE it also runs the transport self-test, whose verdict on loopback must be "no
// buffering, SSE works"; behind a proxy that buffers the self-test's streams it must say LongPoll,
// and behind one that cuts silent connections, SSE with a short heartbeat. Screenshots go to
// test/node/artifacts/console-<transport>.png.
//
// Needs Debian's chromium at /usr/bin/chromium (or CHROMIUM_PATH). Without it the test is
// skipped, except in CI (CI=true), where it fails.

import {test, before, after} from "node:test"
import assert from "node:assert/strict"
import {randomBytes} from "node:crypto"
import fs from "node:fs"
import http from "node:http"
import os from "node:os"
import path from "node:path"
import {fileURLToPath} from "node:url"
import {chromium} from "playwright-core"
import {startServer, openClient, closeAllClients, newUserId, sleep, SHORT} from "./helpers.mjs"

const here = path.dirname(fileURLToPath(import.meta.url))
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium"
const ARTIFACTS = path.join(here, "artifacts")
const IN_CI = process.env.CI === "true"
const SELFTEST_IDLE_S = 3
const WAIT = 8000 // what the page should show "now" (SSE's first connect, a poll round trip)

const haveChromium = fs.existsSync(CHROMIUM)
let server
let context
let profile

before(async () => {
  if(!haveChromium){ return }
  server = await startServer()
  profile = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-console-chromium-"))
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    viewport: {width: 1440, height: 900},
    timeout: 20_000,
  })
  fs.mkdirSync(ARTIFACTS, {recursive: true})
})

after(async () => {
  await closeAllClients()
  await context?.close()
  await server?.stop()
  if(profile){ fs.rmSync(profile, {recursive: true, force: true}) }
})

/** Skips without Chromium outside CI; in CI a missing Chromium fails. */
function needChromium(t){
  if(haveChromium){ return true }
  if(IN_CI){ assert.fail(`CI=true but there is no Chromium at ${CHROMIUM}: .ci/run installs Debian's chromium`) }
  t.skip(`no Chromium at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH to run the console test`)
  return false
}

const lobby = 'section.topic[data-topic="sala:lobby"]'

for(const transport of ["sse", "longpoll"]){
  const label = transport === "sse" ? "SSE" : "LongPoll"
  test(`console over ${label}: connect, join sala:lobby, push and see the echo and the reply, live presence of two users` +
    (transport === "sse" ? ", self-test verdict SSE" : ""), {timeout: 40_000}, async (t) => {
    if(!needChromium(t)){ return }
    const userId = newUserId()
    const name = `Consola ${label}`
    const token = server.token(userId, name)
    const page = await context.newPage()
    const problems = []
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`))
    // requests the page cancels (a poll or stream at disconnect, a page closing) are normal;
    // anything else failing is not (a stream cut mid-chunk, a 404)
    const cancelled = (text) => /ERR_ABORTED/.test(text)
    const hideTokens = (url) => url.replace(/token=[^&]*/g, "token=…")
    page.on("console", (msg) => {
      if(msg.type() === "error" && !cancelled(msg.text())){ problems.push(`console error: ${msg.text()}`) }
    })
    page.on("response", (r) => { if(r.status() >= 400){ problems.push(`HTTP ${r.status()} for ${hideTokens(r.url())}`) } })
    page.on("requestfailed", (r) => {
      const why = r.failure()?.errorText || ""
      if(!cancelled(why)){ problems.push(`request failed: ${r.method()} ${hideTokens(r.url())} ${why}`) }
    })
    page.setDefaultTimeout(WAIT)
    try {
      // the token comes in the fragment, which never reaches the server
      const query = transport === "sse" ? `?selftest_idle=${SELFTEST_IDLE_S}` : ""
      const res = await page.goto(`${server.base}/${query}#token=${encodeURIComponent(token)}`)
      assert.equal(res.status(), 200)
      assert.match(res.headers()["content-type"], /^text\/html/)
      await page.waitForSelector("body[data-ready=true]")
      assert.equal(await page.inputValue("#token"), token, "the token was not taken from #token=...")
      assert.equal(await page.inputValue("#server-base"), server.base)

      // connect
      await page.selectOption("#transport", transport)
      await page.click("#connect")
      await page.waitForSelector('#conn-badge[data-state="open"]')
      assert.equal(await page.textContent("#conn-state"), `open · ${label}`)

      // join the lobby: joined, and the presence list shows this user with the token's name
      await page.fill("#join-topic", "sala:lobby")
      await page.fill("#join-params", "{}")
      await page.click("#join")
      await page.waitForSelector(`${lobby}[data-state="joined"]`)
      const self = page.locator(`${lobby} .presence-entry[data-key="${userId}"]`)
      await self.waitFor()
      assert.match(await self.locator(".metas").textContent(), new RegExp(`nombre: ?${name}`))
      assert.ok(await page.locator(`${lobby} .reply.ok[data-what="join"]`).count() === 1, "no ok reply to the join shown")

      // invalid JSON is refused in the page and never sent
      const panel = page.locator(lobby)
      const outBefore = await page.locator("#frames li.out").count()
      await panel.locator(".push-event").fill("nuevo_mensaje")
      await panel.locator(".push-payload").fill("{contenido: sin comillas}")
      await panel.locator(".push-send").click()
      assert.match(await panel.locator(".push-error").textContent(), /invalid JSON/)
      await sleep(200)
      assert.equal(await page.locator("#frames li.out").count(), outBefore, "an invalid payload was sent")

      // push a message: the reply is ok, and the broadcast comes back in the raw frame log
      const text = `hola ${randomBytes(6).toString("hex")}`
      await panel.locator(".push-payload").fill(JSON.stringify({contenido: text}))
      await panel.locator(".push-send").click()
      assert.equal(await panel.locator(".push-error").textContent(), "")
      await page.waitForSelector(`${lobby} .reply.ok[data-what="nuevo_mensaje"]`)
      const framesWith = (dir) => page.$$eval(`#frames li.${dir} .text`, (els) => els.map((e) => e.textContent))
      let echo
      for(const deadline = Date.now() + WAIT; !echo && Date.now() < deadline; await sleep(50)){
        echo = (await framesWith("in")).find((f) => f.includes('"mensaje_recibido"') && f.includes(text))
      }
      assert.ok(echo, `no mensaje_recibido with ${JSON.stringify(text)} in the raw frame log`)
      const [, , topic, event, payload] = JSON.parse(echo) // the exact wire text: a V2 frame
      assert.deepEqual([topic, event, payload.contenido, payload.autor], ["sala:lobby", "mensaje_recibido", text, name])
      const sent = (await framesWith("out")).map((f) => JSON.parse(f)).find((f) => f[3] === "nuevo_mensaje" && f[4].contenido === text)
      assert.ok(sent, "the pushed frame is not in the raw frame log")
      assert.equal(sent[2], "sala:lobby")
      assert.equal(typeof sent[1], "string", "an out frame has a ref")
      // the log has timestamps with milliseconds
      assert.match(await page.locator("#frames li.out time").first().textContent(), /^\d\d:\d\d:\d\d\.\d{3}$/)

      // a second user (phoenix.js from Node, LongPoll) joins: the console lists both
      const other = await openClient(server, {name: "Segundo Usuario"})
      await other.join("sala:lobby")
      const second = page.locator(`${lobby} .presence-entry[data-key="${other.key}"]`)
      await second.waitFor()
      assert.match(await second.locator(".metas").textContent(), /nombre: ?Segundo Usuario/)
      assert.equal(await self.count(), 1)
      assert.ok(Number(await page.textContent(`${lobby} .presence-count`)) >= 2)

      if(transport === "sse"){
        // the self-test against the same server: loopback neither buffers nor cuts
        assert.equal(await page.inputValue("#selftest-idle"), String(SELFTEST_IDLE_S))
        await page.click("#selftest-run")
        await page.waitForSelector("#selftest-verdict:not([hidden])", {timeout: (SELFTEST_IDLE_S + 15) * 1000})
        const verdict = await page.getAttribute("#selftest-verdict", "data-verdict")
        const verdictText = await page.textContent("#selftest-verdict")
        t.diagnostic(`checks: ${(await page.textContent("#selftest-checks")).replace(/\s+/g, " ").trim()}`)
        assert.equal(verdict, "sse", `self-test verdict: ${verdictText}`)
        assert.match(verdictText, /Verdict: SSE/)
        assert.equal(await page.getAttribute("#check-stream", "data-status"), "pass", await page.textContent("#check-stream"))
        assert.equal(await page.getAttribute("#check-stream", "data-buffered"), "false")
        assert.match(await page.textContent("#check-stream"), /no buffering/)
        assert.equal(await page.getAttribute("#check-longpoll", "data-status"), "pass", await page.textContent("#check-longpoll"))
        assert.equal(await page.getAttribute("#check-idle", "data-status"), "pass", await page.textContent("#check-idle"))
        assert.match(await page.textContent("#check-idle"), new RegExp(`no cut within ${SELFTEST_IDLE_S} s`))
      }

      await page.evaluate(() => window.scrollTo(0, 0))
      await page.screenshot({path: path.join(ARTIFACTS, `console-${transport}.png`), fullPage: true})

      // the second user leaves: gone from the console's list, this user stays
      await other.close()
      await second.waitFor({state: "detached"})
      assert.equal(await self.count(), 1)

      // leave, then disconnect
      await panel.locator(".leave").click()
      await page.waitForSelector(lobby, {state: "detached"})
      await page.click("#disconnect")
      await page.waitForSelector('#conn-badge[data-state="closed"]')
      assert.deepEqual(problems, [])
    } finally {
      await page.close()
    }
  })
}

test("the console's assets load without a network beyond the gateway", {timeout: 20_000}, async (t) => {
  if(!needChromium(t)){ return }
  const page = await context.newPage()
  const foreign = []
  page.on("request", (req) => { if(!req.url().startsWith(server.base)){ foreign.push(req.url()) } })
  const failed = []
  page.on("requestfailed", (req) => failed.push(`${req.url()} ${req.failure()?.errorText}`))
  try {
    await page.goto(`${server.base}/`)
    await page.waitForSelector("body[data-ready=true]", {timeout: SHORT})
    assert.deepEqual(foreign, [])
    assert.deepEqual(failed, [])
    assert.equal(await page.title(), "Sluice console")
  } finally {
    await page.close()
  }
})

/**
 * A loopback proxy to `target` that mistreats the self-test's streams (/socket/selftest/*) as
 * hostile paths do and passes everything else: mode "buffer" holds a response until it ends
 * (nginx with proxy_buffering on), mode "idle-cut" drops it after `cutMs` without a byte (an
 * idle timeout).
 */
async function hostileProxy(target, {mode, cutMs = 1500}){
  const upstream = new URL(target)
  const srv = http.createServer((req, res) => {
    const hostile = req.url.startsWith("/socket/selftest/")
    const up = http.request({host: upstream.hostname, port: upstream.port, method: req.method, path: req.url,
      headers: {...req.headers, host: upstream.host}}, (ur) => {
      const headers = {...ur.headers}
      delete headers["transfer-encoding"]
      delete headers.connection
      res.writeHead(ur.statusCode, headers)
      if(!hostile){ return ur.pipe(res) }
      if(mode === "buffer"){
        const held = []
        ur.on("data", (c) => held.push(c))
        ur.on("end", () => res.end(Buffer.concat(held)))
        return
      }
      let timer = null
      const arm = () => {
        clearTimeout(timer)
        timer = setTimeout(() => { ur.destroy(); res.destroy() }, cutMs)
      }
      arm()
      ur.on("data", (c) => { res.write(c); arm() })
      ur.on("end", () => { clearTimeout(timer); res.end() })
      res.on("close", () => { clearTimeout(timer); ur.destroy() })
    })
    up.on("error", () => res.destroy())
    req.pipe(up)
  })
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve))
  return {
    base: `http://127.0.0.1:${srv.address().port}`,
    stop: () => new Promise((resolve) => { srv.closeAllConnections(); srv.close(() => resolve()) }),
  }
}

for(const [mode, verdict] of [["buffer", "longpoll"], ["idle-cut", "sse-heartbeat"]]){
  test(`self-test behind a proxy that ${mode === "buffer" ? "buffers streams: verdict LongPoll" : "cuts silent connections after 1.5 s: verdict SSE with a short heartbeat"}`,
    {timeout: 30_000}, async (t) => {
      if(!needChromium(t)){ return }
      const proxy = await hostileProxy(server.base, {mode, cutMs: 1500})
      const page = await context.newPage()
      try {
        const token = server.token(newUserId(), "Prueba")
        await page.goto(`${proxy.base}/?selftest_idle=${SELFTEST_IDLE_S}#token=${encodeURIComponent(token)}`)
        await page.waitForSelector("body[data-ready=true]", {timeout: SHORT})
        assert.equal(await page.inputValue("#server-base"), proxy.base)
        await page.click("#selftest-run")
        await page.waitForSelector("#selftest-verdict:not([hidden])", {timeout: (SELFTEST_IDLE_S + 15) * 1000})
        const text = await page.textContent("#selftest-verdict")
        t.diagnostic(`checks: ${(await page.textContent("#selftest-checks")).replace(/\s+/g, " ").trim()}`)
        assert.equal(await page.getAttribute("#selftest-verdict", "data-verdict"), verdict, text)
        assert.equal(await page.getAttribute("#check-longpoll", "data-status"), "pass", await page.textContent("#check-longpoll"))
        if(mode === "buffer"){
          assert.equal(await page.getAttribute("#check-stream", "data-buffered"), "true", await page.textContent("#check-stream"))
          assert.match(await page.textContent("#check-stream"), /this path buffers streams/)
          assert.match(text, /Verdict: LongPoll/)
        } else {
          assert.equal(await page.getAttribute("#check-stream", "data-buffered"), "false", await page.textContent("#check-stream"))
          assert.equal(await page.getAttribute("#check-idle", "data-cut"), "true", await page.textContent("#check-idle"))
          const cut = Number(/after ([\d.]+) s of silence/.exec(await page.textContent("#check-idle"))?.[1])
          assert.ok(cut >= 1.3 && cut <= 2.5, `idle cut measured at ${cut} s, the proxy cut at 1.5 s`)
          assert.match(text, /Verdict: SSE with a short --sse-heartbeat below the idle cut/)
          assert.match(text, /--sse-heartbeat 1s or less/)
        }
      } finally {
        await page.close()
        await proxy.stop()
      }
    })
}
