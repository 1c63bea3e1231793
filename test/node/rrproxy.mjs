// A round-robin reverse proxy for the multi-instance tests, as a CDN or load balancer without
// sticky sessions would be: every incoming request goes to the next upstream in turn, whoever
// sent it. node:http only, no dependency.
//
// - Bodies are streamed both ways (pipe), never buffered, so a long poll parked at an upstream
//   stays parked at the proxy too and its answer passes through as soon as it comes.
// - Hop-by-hop headers (RFC 9110 §7.6.1: Connection and the headers it lists, Keep-Alive,
//   Proxy-*, TE, Trailer, Transfer-Encoding, Upgrade) are not forwarded; X-Forwarded-* and Via are
//   added.
// - An upstream that refuses the connection (a dead instance) has received nothing, so the
//   request goes to the next upstream instead, as a load balancer's connect retry does.
// - An upstream that fails once it has the request (killed mid-request, connection reset) makes
//   the proxy answer 502 with a plain-text body, as a CDN does; if the answer had already started,
//   the client connection is cut.
// - WebSocket upgrades pass through as a load balancer passes them: the upgrade request goes to
//   the next upstream in turn (Upgrade and Connection kept: they are what it asks for), its answer
//   comes back as is (a 101 or a refusal), and after a 101 the two connections are spliced until
//   either ends. `upgrades` counts the upgrades each upstream accepted with a 101, `sockets` the
//   spliced connections each holds now.
//
//   const proxy = await startProxy(["http://127.0.0.1:4001", "http://127.0.0.1:4002"])
//   proxy.url; proxy.counts /* [n0, n1] requests forwarded to each */; await proxy.close()

import http from "node:http"

const HOP_BY_HOP = new Set([
  "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
  "te", "trailer", "transfer-encoding", "upgrade",
])

/** Copies headers without the hop-by-hop ones (including those named in Connection). */
function endToEnd(headers){
  const named = new Set(String(headers.connection || "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean))
  const out = {}
  for(const [name, value] of Object.entries(headers)){
    const lower = name.toLowerCase()
    if(HOP_BY_HOP.has(lower) || named.has(lower)){ continue }
    out[name] = value
  }
  return out
}

/** Errors that mean the upstream never got the request (nothing listening, or not reachable). */
const NOT_CONNECTED = new Set(["ECONNREFUSED", "EHOSTUNREACH", "ENETUNREACH", "EADDRNOTAVAIL"])

/**
 * Starts the proxy on a free loopback port.
 * @param {string[]} upstreams base URLs, e.g. "http://127.0.0.1:4001"
 * @param {{maxLog?: number}} [opts]
 * @returns {Promise<{url: string, port: number, upstreams: string[], counts: number[],
 *   refused: number[], failed: number[], inflight: number[], upgrades: number[], sockets: number[],
 *   log: object[], close: () => Promise<void>}>}
 *   counts: requests forwarded to (accepted by) each upstream; refused: connections each refused
 *   (the request then went to the next one); failed: requests each accepted and then failed, each
 *   answered 502 by the proxy; inflight: requests each holds right now; log: one record per request,
 *   {id, method, url, upstream, status, error, start, end} (the last maxLog of them).
 */
export async function startProxy(upstreams, {maxLog = 20_000} = {}){
  if(!Array.isArray(upstreams) || upstreams.length === 0){ throw new Error("startProxy: no upstreams") }
  const targets = upstreams.map((u) => new URL(u))
  const n = targets.length
  const counts = new Array(n).fill(0)
  const refused = new Array(n).fill(0)
  const failed = new Array(n).fill(0)
  const inflight = new Array(n).fill(0)
  const upgrades = new Array(n).fill(0)
  const sockets = new Array(n).fill(0)
  const spliced = new Set() // [client socket, upstream socket] pairs, cut by close()
  const log = []
  let next = 0
  let seq = 0

  const server = http.createServer((req, res) => {
    // session: the SSE session a POST names in its X-Sluice-Session credential (its first 32 characters, the public id)
    const rec = {id: ++seq, method: req.method, url: req.url, session: req.headers["x-sluice-session"]?.slice(0, 32) ?? null,
      upstream: null, status: null, error: null, start: Date.now(), end: null}
    log.push(rec)
    if(log.length > maxLog){ log.splice(0, log.length - maxLog) }
    const first = next
    next = (next + 1) % n
    let clientGone = false
    let current = null // the upstream request in progress
    res.on("close", () => {
      rec.end ??= Date.now()
      if(!res.writableFinished){
        clientGone = true
        if(current){ current.destroy() }
      }
    })

    const badGateway = (text) => {
      rec.status = 502
      rec.end = Date.now()
      if(res.headersSent){ res.destroy(); return }
      const body = `502 Bad Gateway\n${text}\n`
      res.writeHead(502, {"content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body), "cache-control": "no-store"})
      res.end(body)
    }

    const attempt = (tries) => {
      if(clientGone){ return }
      const i = (first + tries) % n
      const target = targets[i]
      const headers = endToEnd(req.headers)
      const prior = req.headers["x-forwarded-for"]
      headers["x-forwarded-for"] = prior ? `${prior}, ${req.socket.remoteAddress}` : req.socket.remoteAddress
      headers["x-forwarded-host"] = req.headers.host ?? ""
      headers["x-forwarded-proto"] = "http"
      headers.via = `${req.httpVersion} rrproxy`
      // a fresh connection per request (agent: false): a refused connect then proves the upstream
      // never saw the request, and no pooled socket of a dead instance is ever reused
      const up = http.request({
        protocol: target.protocol, hostname: target.hostname, port: target.port,
        method: req.method, path: req.url, headers, agent: false,
      })
      current = up
      let connected = false
      let counted = false // counted in counts/inflight of upstream i
      let settled = false // done() ran: inflight released, outcome recorded
      const done = (failure) => {
        if(settled){ return }
        settled = true
        if(counted){ inflight[i]-- }
        if(failure && counted && !clientGone){
          failed[i]++
          rec.error ??= failure
        }
        rec.end ??= Date.now()
      }
      up.on("socket", (sock) => {
        const onConnect = () => {
          if(connected){ return }
          connected = true
          counted = true
          rec.upstream = i
          counts[i]++
          inflight[i]++
          req.pipe(up) // the body starts flowing only once an upstream accepted the connection
        }
        if(sock.connecting){ sock.once("connect", onConnect) } else { onConnect() }
      })
      up.on("response", (ures) => {
        rec.status = ures.statusCode
        res.writeHead(ures.statusCode, ures.statusMessage, endToEnd(ures.headers))
        ures.pipe(res)
        ures.on("error", () => {}) // reported by "close" below
        ures.on("close", () => {
          if(ures.complete){ done(null); return }
          // the upstream died while answering: cut the client's connection as well
          done("upstream closed mid-response")
          res.destroy()
        })
      })
      up.on("error", (err) => {
        if(clientGone){ done(null); return }
        if(!connected && NOT_CONNECTED.has(err.code)){
          refused[i]++
          settled = true
          if(tries + 1 < n){ attempt(tries + 1); return }
          rec.error = `all ${n} upstreams refused the connection (last: ${target.host}: ${err.code})`
          badGateway(rec.error)
          return
        }
        const what = `upstream ${target.host} failed: ${err.code || err.message}`
        done(what)
        if(!res.headersSent){ badGateway(what) } else { res.destroy() }
      })
    }
    req.on("error", () => { if(current){ current.destroy() } })
    attempt(0)
  })
  server.on("upgrade", (req, socket, head) => {
    const rec = {id: ++seq, method: req.method, url: req.url, upstream: null, status: null, error: null, start: Date.now(), end: null}
    log.push(rec)
    if(log.length > maxLog){ log.splice(0, log.length - maxLog) }
    const first = next
    next = (next + 1) % n
    socket.on("error", () => {})
    const attempt = (tries) => {
      const i = (first + tries) % n
      const target = targets[i]
      const headers = endToEnd(req.headers)
      headers.connection = "Upgrade"
      headers.upgrade = req.headers.upgrade
      headers["x-forwarded-for"] = req.socket.remoteAddress
      headers["x-forwarded-host"] = req.headers.host ?? ""
      headers["x-forwarded-proto"] = "http"
      headers.via = `${req.httpVersion} rrproxy`
      const up = http.request({
        protocol: target.protocol, hostname: target.hostname, port: target.port,
        method: req.method, path: req.url, headers, agent: false,
      })
      let connected = false
      up.on("socket", (sock) => sock.once("connect", () => { connected = true; rec.upstream = i; counts[i]++ }))
      up.on("upgrade", (ures, usock, uhead) => {
        rec.status = 101
        upgrades[i]++
        sockets[i]++
        const lines = [`HTTP/1.1 101 ${ures.statusMessage || "Switching Protocols"}`]
        for(let k = 0; k < ures.rawHeaders.length; k += 2){ lines.push(`${ures.rawHeaders[k]}: ${ures.rawHeaders[k + 1]}`) }
        socket.write(lines.join("\r\n") + "\r\n\r\n")
        if(uhead.length > 0){ socket.write(uhead) }
        if(head.length > 0){ usock.write(head) }
        const pair = [socket, usock]
        spliced.add(pair)
        usock.on("error", () => {})
        let ended = false
        const end = () => {
          if(ended){ return }
          ended = true
          sockets[i]--
          spliced.delete(pair)
          rec.end = Date.now()
          socket.destroy()
          usock.destroy()
        }
        usock.on("close", end)
        socket.on("close", end)
        usock.pipe(socket)
        socket.pipe(usock)
      })
      up.on("response", (ures) => {
        // a refused upgrade: its answer, then the connection ends
        rec.status = ures.statusCode
        rec.end = Date.now()
        const lines = [`HTTP/1.1 ${ures.statusCode} ${ures.statusMessage}`]
        const h = endToEnd(ures.headers)
        h.connection = "close"
        for(const [k, v] of Object.entries(h)){ for(const one of [].concat(v)){ lines.push(`${k}: ${one}`) } }
        socket.write(lines.join("\r\n") + "\r\n\r\n")
        ures.pipe(socket)
      })
      up.on("error", (err) => {
        if(!connected && NOT_CONNECTED.has(err.code)){
          refused[i]++
          if(tries + 1 < n){ attempt(tries + 1); return }
        }
        if(connected){ failed[i]++ }
        rec.error = `upstream ${target.host} failed: ${err.code || err.message}`
        rec.status = 502
        rec.end = Date.now()
        socket.end(`HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n502 Bad Gateway\n${rec.error}\n`)
      })
      up.end()
    }
    attempt(0)
  })
  server.keepAliveTimeout = 5000

  await new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => { server.off("error", reject); resolve() })
  })
  const {port} = server.address()
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    upstreams: [...upstreams],
    counts, refused, failed, inflight, upgrades, sockets, log,
    /** Stops accepting, cuts every open connection (spliced WebSockets too) and resolves once closed. */
    close(){
      return new Promise((resolve) => {
        server.close(() => resolve())
        server.closeAllConnections()
        for(const [a, b] of spliced){ a.destroy(); b.destroy() }
      })
    },
  }
}
