// The phoenix.js suites over WebSocket. Node 20 has no global WebSocket, so phoenix.js is given
// the npm `ws` client as its transport, as phoenix.js documents for environments without one:
// `new Socket(url, {transport: WebSocket})`. Each ws-<suite>.test.mjs file calls useWebSocket()
// and then imports <suite>.test.mjs, whose clients (helpers.mjs' openClient) then connect to
// /socket/websocket instead of /socket/longpoll.

import http from "node:http"
import net from "node:net"
import WebSocket from "ws"
import {useTransport} from "./helpers.mjs"

export {WebSocket}

/** Makes helpers.mjs' openClient use phoenix.js over WebSocket in this test process. */
export function useWebSocket(){ useTransport(WebSocket) }

/**
 * A loopback reverse proxy to `target` (a server's base URL) that passes plain HTTP requests and
 * treats WebSocket upgrades according to `proxy.mode`, which a test may change at any time:
 *   "pass"   forwarded, and the two connections spliced after the 101;
 *   "refuse" answered `400 Bad Request` (a proxy that does not speak WebSocket);
 *   "hold"   never answered (a middlebox that swallows the upgrade), until the proxy stops.
 * and SSE streams (GET /socket/sse) according to `proxy.sse`:
 *   "pass"   forwarded as they come;
 *   "buffer" held, headers included, until the upstream ends them (a proxy that buffers whole
 *            responses: a stream that stays open never arrives);
 *   "refuse" answered `502 Bad Gateway` (a proxy that drops long-lived responses).
 * `proxy.stats` counts the upgrades by outcome, and the SSE streams and long-polls (`streams`,
 * `polls`); `proxy.socketUrl` is for phoenix.js's Socket.
 */
export async function startUpgradeProxy(target, {mode = "pass", sse = "pass"} = {}){
  const base = new URL(target)
  const held = new Set()
  const proxy = {mode, sse, stats: {passed: 0, refused: 0, held: 0, streams: 0, polls: 0}}
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, "http://proxy").pathname
    const isStream = pathname.endsWith("/socket/sse") && req.method === "GET"
    if(isStream){ proxy.stats.streams++ }
    if(pathname.endsWith("/socket/longpoll") && req.method === "GET"){ proxy.stats.polls++ }
    if(isStream && proxy.sse === "refuse"){
      res.writeHead(502, {"content-type": "text/plain"})
      res.end("bad gateway\n")
      return
    }
    const buffer = isStream && proxy.sse === "buffer"
    const up = http.request({hostname: base.hostname, port: base.port, method: req.method, path: req.url,
      headers: {...req.headers, host: base.host}, agent: false}, (ures) => {
      if(buffer){
        const chunks = []
        ures.on("data", (c) => chunks.push(c))
        ures.on("end", () => { res.writeHead(ures.statusCode, ures.headers); res.end(Buffer.concat(chunks)) })
        return
      }
      res.writeHead(ures.statusCode, ures.headers)
      ures.pipe(res)
    })
    up.on("error", () => res.destroy())
    res.on("close", () => up.destroy())
    req.pipe(up)
  })
  server.on("upgrade", (req, socket, head) => {
    socket.on("error", () => {})
    held.add(socket)
    socket.on("close", () => held.delete(socket))
    if(proxy.mode === "refuse"){
      proxy.stats.refused++
      const body = "this proxy passes no upgrades\n"
      socket.end(`HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`)
      return
    }
    if(proxy.mode === "hold"){ proxy.stats.held++; return }
    proxy.stats.passed++
    const up = net.connect(Number(base.port), base.hostname, () => {
      const lines = [`${req.method} ${req.url} HTTP/1.1`]
      for(let i = 0; i < req.rawHeaders.length; i += 2){
        lines.push(`${req.rawHeaders[i]}: ${req.rawHeaders[i].toLowerCase() === "host" ? base.host : req.rawHeaders[i + 1]}`)
      }
      up.write(lines.join("\r\n") + "\r\n\r\n")
      if(head.length > 0){ up.write(head) }
      up.pipe(socket)
      socket.pipe(up)
    })
    held.add(up)
    up.on("close", () => { held.delete(up); socket.destroy() })
    up.on("error", () => socket.destroy())
    socket.on("close", () => up.destroy())
  })
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve))
  const url = `http://127.0.0.1:${server.address().port}`
  return Object.assign(proxy, {
    base: url,
    socketUrl: `${url}/socket`,
    async stop(){
      for(const s of held){ s.destroy() }
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
  })
}
