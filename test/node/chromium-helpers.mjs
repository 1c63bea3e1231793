// The headless-Chromium setup shared by websocket-chromium.test.mjs and
// websocket-fallback-chromium.test.mjs: one server and one persistent Chromium context per test
// file, upgrade proxies stopped after each test, and a page of a proxy's origin with a phoenix.js
// client in Node ("Beto", over WebSocket) in sala:lobby to see what the page does.
//
// Needs Debian's chromium at /usr/bin/chromium (or CHROMIUM_PATH). Without it the tests are
// skipped, except in CI (CI=true), where they fail.

import {before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import os from "node:os"
import path from "node:path"
import {chromium} from "playwright-core"
import {startServer, openClient, closeAllClients, newUserId} from "./helpers.mjs"
import {WebSocket, startUpgradeProxy} from "./ws-helpers.mjs"

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium"
const IN_CI = process.env.CI === "true"

/**
 * Registers this test file's before/afterEach/after hooks: a server and a Chromium context with a
 * fresh profile under `profilePrefix` (in the OS's temporary folder), each test's proxies stopped
 * and clients closed after it, everything removed at the end. Returns the suite, whose `server`
 * and `browser` are set once `before` has run (and stay unset without Chromium).
 */
export function useChromium(profilePrefix){
  const suite = {server: undefined, browser: undefined, proxies: []}
  const haveChromium = fs.existsSync(CHROMIUM)
  let profile

  before(async () => {
    if(!haveChromium){ return }
    suite.server = await startServer()
    profile = fs.mkdtempSync(path.join(os.tmpdir(), profilePrefix))
    suite.browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"],
      timeout: 20_000,
    })
  })

  afterEach(async () => {
    await closeAllClients()
    await Promise.all(suite.proxies.splice(0).map((p) => p.stop()))
  })

  after(async () => {
    await suite.browser?.close()
    await suite.server?.stop()
    if(profile){ fs.rmSync(profile, {recursive: true, force: true}) }
  })

  /** Skips test `t` without Chromium outside CI; in CI a missing Chromium fails. */
  suite.needChromium = (t) => {
    if(haveChromium){ return true }
    if(IN_CI){ assert.fail(`CI=true but there is no Chromium at ${CHROMIUM}: .ci/run installs Debian's chromium`) }
    t.skip(`no Chromium at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`)
    return false
  }

  /**
   * Starts an upgrade proxy to the server with `proxyOpts` (ws-helpers.mjs' startUpgradeProxy,
   * stopped after the test), a token for a new user "Navegadora" for the page, Beto (phoenix.js
   * in Node over WebSocket) in sala:lobby, and a new page already at the proxy's origin, so that
   * the page's "/socket" and "/js" go through the proxy. The caller closes the page.
   */
  suite.openProxiedPage = async (proxyOpts) => {
    const proxy = await startUpgradeProxy(suite.server.base, proxyOpts)
    suite.proxies.push(proxy)
    const userId = newUserId()
    const token = suite.server.token(userId, "Navegadora")
    const beto = await openClient(suite.server, {name: "Beto", socketOpts: {transport: WebSocket}})
    const {channel: chB} = await beto.join("sala:lobby")
    const page = await suite.browser.newPage()
    try {
      await page.goto(`${proxy.base}/healthz`)
    } catch(err){
      await page.close()
      throw err
    }
    return {proxy, userId, token, beto, chB, page}
  }

  return suite
}
