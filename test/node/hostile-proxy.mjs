// A deliberately hostile reverse proxy for the lossless suites (hostile.test.mjs and
// cluster-hostile.test.mjs), Node's standard library only. It sits between phoenix.js clients and
// one or more sluice instances (round robin, as a load balancer without stickiness) and mistreats
// the transport traffic (/socket/*) in the ways real proxies, CDNs and networks do:
//
//   bufferAll      holds each response, headers included, until the upstream finished it
//   bufferBytes    forwards the body in blocks of N bytes (the rest when the response ends)
//   idleCutMs      cuts a connection whose response moved no byte for that long
//   cutAfterMs     cuts each connection that long after it was opened ([min, max]: drawn per
//                  connection), mid-event when a stream is flowing: a random prefix of the next chunk
//                  goes through, then the connection drops; idle keep-alive connections drop too
//   replayPosts    sends each POST upstream twice (a proxy that retries), and answers a share
//   post502Share   of them (this share) with 502 once the upstream has handled the first copy
//   dropShare      throws away this share of responses after the upstream handled them: the
//                  connection is reset, or a 502 page is sent (drawn per drop); a dropped stream is
//                  dropped before its first byte
//   stripHeaders   removes these request headers (e.g. ["last-event-id"])
//   gzip           compresses every response the client accepts gzip for, ignoring no-transform,
//                  without flushing per event (as compression middleware does)
//   spliceAfterMs  loses each upstream stream that long after it started, mid-event (a random prefix
//                  of the next chunk goes through), then requests the same URL upstream again and
//                  splices the new stream's bytes onto the same client response, as a proxy that
//                  "retries" a failed upstream transparently does: the cut event is glued to the
//                  next stream's first line
//
// For tests: `log: true` records every request in proxy.log ({at, method, url, lastEventId,
// session, lpToken: the Last-Event-ID, X-Sluice-Session and X-Phoenix-Longpoll-Token headers it
// carried, and what the proxy did: action}); `rewrite(text)` changes each chunk of a stream.
//
// Every decision is drawn from a seeded PRNG: the suite prints its seed, and HOSTILE_SEED=<seed>
// makes the same draws again (the timing of a live network still varies from run to run).
//
//   const proxy = await startHostileProxy(["http://127.0.0.1:4001"], {seed: 42, dropShare: 0.1})
//   proxy.url; proxy.stats /* what it did */; await proxy.close()

import http from "node:http"
import zlib from "node:zlib"

const HOP_BY_HOP = new Set([
  "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
  "te", "trailer", "transfer-encoding", "upgrade",
])

/** Headers without the hop-by-hop ones (and those Connection names). */
function endToEnd(headers){
  const named = new Set(String(headers.connection || "").split(",").map((s) => s.trim().toLowerCase()).filter(Boolean))
  const out = {}
  for(const [name, value] of Object.entries(headers)){
    const lower = name.toLowerCase()
    if(!HOP_BY_HOP.has(lower) && !named.has(lower)){ out[lower] = value }
  }
  return out
}

/**
 * A small seeded PRNG (mulberry32): the same seed gives the same draws.
 * @param {number} seed - an unsigned 32-bit integer
 */
export function seededRandom(seed){
  let a = seed >>> 0
  const next = () => {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  return {
    seed,
    next,
    /** An integer in [min, max]. */
    int: (min, max) => min + Math.floor(next() * (max - min + 1)),
    /** true with probability p. */
    chance: (p) => p > 0 && next() < p,
    /** A new generator derived from this one and a label, so that each user draws its own sequence. */
    fork(label){
      let h = seed ^ 0x9E3779B9
      for(const c of String(label)){ h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0 }
      return seededRandom(h)
    },
  }
}

/**
 * The suite's seed: HOSTILE_SEED when set (to reproduce a failure), else a random one. Printed,
 * so that a failing CI run says how to reproduce it.
 */
export function suiteSeed(label = "hostile"){
  const given = process.env.HOSTILE_SEED
  const seed = given !== undefined && given !== "" ? Number(given) >>> 0 : (Math.random() * 2 ** 32) >>> 0
  console.log(`[${label}] seed ${seed}: HOSTILE_SEED=${seed} reproduces these draws`)
  return seed
}

const isTransport = (req) => req.url.startsWith("/socket/")

/**
 * Starts the proxy on a free loopback port in front of `upstreams` (base URLs).
 * @param {string[]} upstreams
 * @param {object} opts - the hostilities above, plus `seed` and `scope(req)` (default: /socket/*)
 */
export async function startHostileProxy(upstreams, opts = {}){
  const targets = upstreams.map((u) => new URL(u))
  const rng = seededRandom(opts.seed ?? 1)
  const scope = opts.scope ?? isTransport
  const stripped = new Set((opts.stripHeaders ?? []).map((h) => h.toLowerCase()))
  const stats = {requests: 0, streams: 0, buffered: 0, chunked: 0, idleCuts: 0, ageCuts: 0, midEventCuts: 0,
    spliced: 0, replayed: 0, answered502: 0, dropped: 0, droppedStreams: 0, stripped: 0, gzipped: 0, upstreamErrors: 0}
  const sockets = new Set()
  const log = []
  let next = 0

  const drawCutAfter = () => {
    const c = opts.cutAfterMs
    return Array.isArray(c) ? rng.int(c[0], c[1]) : c
  }

  const server = http.createServer()
  server.keepAliveTimeout = 5000
  server.on("connection", (sock) => {
    sockets.add(sock)
    sock.on("close", () => { sockets.delete(sock); clearTimeout(sock.hostileCut) })
    if(opts.cutAfterMs){
      sock.hostileCut = setTimeout(() => {
        stats.ageCuts++
        // mid-event when a response is flowing, else at once
        if(sock.hostileRelay){ sock.hostileRelay.cutSoon() } else { sock.destroy() }
      }, drawCutAfter())
    }
  })

  server.on("request", (req, res) => {
    stats.requests++
    const entry = {at: Date.now(), method: req.method, url: req.url, lastEventId: req.headers["last-event-id"] ?? null,
      session: req.headers["x-sluice-session"] ?? null, lpToken: req.headers["x-phoenix-longpoll-token"] ?? null, action: "passed"}
    if(opts.log){ log.push(entry) }
    const hostile = scope(req)
    const target = targets[next]
    next = (next + 1) % targets.length
    const headers = endToEnd(req.headers)
    if(hostile){
      for(const h of stripped){
        if(headers[h] !== undefined){ stats.stripped++; delete headers[h] }
      }
    }
    headers.host = target.host
    const sock = req.socket
    let clientGone = false
    res.on("close", () => { if(!res.writableFinished){ clientGone = true } })

    const forward = (body, onResponse) => {
      const up = http.request({hostname: target.hostname, port: target.port, method: req.method, path: req.url, headers, agent: false}, onResponse)
      up.on("error", () => {
        if(clientGone){ return }
        stats.upstreamErrors++
        if(!res.headersSent){ badGateway(res) } else { res.destroy() }
      })
      res.on("close", () => { if(!res.writableFinished){ up.destroy() } })
      if(body !== null){ up.end(body) } else if(req.readableEnded){ up.end() } else { req.pipe(up) }
      return up
    }

    if(!hostile){
      forward(null, (ures) => {
        res.writeHead(ures.statusCode, endToEnd(ures.headers))
        ures.pipe(res)
      })
      return
    }

    // idle cut: no byte of the response for idleCutMs while it is due
    let idleTimer = null
    const touch = () => {
      if(!opts.idleCutMs){ return }
      clearTimeout(idleTimer)
      idleTimer = setTimeout(() => { stats.idleCuts++; sock.destroy() }, opts.idleCutMs)
    }
    res.on("close", () => clearTimeout(idleTimer))
    touch()

    if(req.method === "POST"){
      const parts = []
      req.on("data", (c) => parts.push(c))
      req.on("end", () => {
        const body = Buffer.concat(parts)
        collect(forward(body, null), (first) => {
          if(clientGone){ return }
          if(!opts.replayPosts){ return answer(first) }
          stats.replayed++
          entry.action = "replayed"
          if(rng.chance(opts.post502Share ?? 0)){ stats.answered502++; entry.action = "replayed, 502"; return badGateway(res) }
          collect(forward(body, null), (second) => { if(!clientGone){ answer(second) } })
        })
      })
      return
    }

    forward(null, (ures) => {
      const isStream = String(ures.headers["content-type"] || "").startsWith("text/event-stream")
      if(isStream){
        stats.streams++
        if(rng.chance(opts.dropShare ?? 0)){
          stats.dropped++
          stats.droppedStreams++
          entry.action = "dropped"

          ures.destroy()
          return drop()
        }
        return relay(ures)
      }
      readAll(ures, (whole) => { if(!clientGone){ answer(whole) } })
    })

    // a whole upstream response in memory: {status, headers, body}
    function collect(up, done){
      up.on("response", (ures) => readAll(ures, done))
    }
    function readAll(ures, done){
      const parts = []
      ures.on("data", (c) => parts.push(c))
      ures.on("end", () => done({status: ures.statusCode, headers: ures.headers, body: Buffer.concat(parts)}))
      ures.on("error", () => res.destroy())
    }

    // answers with a response the upstream completed, unless this one is dropped
    function answer(whole){
      if(rng.chance(opts.dropShare ?? 0)){
        stats.dropped++
        entry.action = "dropped"
        return drop()
      }
      const h = endToEnd(whole.headers)
      let body = whole.body
      if(opts.gzip && acceptsGzip(req) && !h["content-encoding"]){
        body = zlib.gzipSync(body)
        h["content-encoding"] = "gzip"
        stats.gzipped++
      }
      h["content-length"] = String(body.length)
      res.writeHead(whole.status, h)
      res.end(body)
    }

    function drop(){
      if(rng.chance(0.5)){ sock.destroy() } else { badGateway(res) }
    }

    // a stream (or any response passed on while it flows), with the hostilities that apply
    function relay(ures, spliced = false){
      const h = endToEnd(ures.headers)
      let source = ures
      if(opts.gzip && acceptsGzip(req) && !h["content-encoding"]){
        stats.gzipped++
        h["content-encoding"] = "gzip"
        delete h["content-length"]
        source = ures.pipe(zlib.createGzip())
      }
      let cutting = false
      let cutTimer = null
      const relayState = {
        cutSoon(){
          if(cutting){ return }
          cutting = true
          // the next chunk decides where the event is cut; a silent stream is cut anyway
          cutTimer = setTimeout(() => sock.destroy(), 200)
        },
      }
      sock.hostileRelay = relayState
      res.on("close", () => {
        clearTimeout(cutTimer)
        clearTimeout(spliceTimer)
        if(sock.hostileRelay === relayState){ sock.hostileRelay = null }
        ures.destroy()
      })
      let splicing = false
      const spliceTimer = opts.spliceAfterMs ? setTimeout(() => { splicing = true }, opts.spliceAfterMs) : null
      const emit = (chunk) => {
        if(splicing){
          // half of this chunk, then the same request again upstream, its body glued on
          splicing = false
          stats.spliced++
          source.removeAllListeners("data")
          source.removeAllListeners("end")
          ures.destroy()
          res.write(chunk.subarray(0, chunk.length > 1 ? rng.int(1, chunk.length - 1) : 0))
          forward(null, (next) => {
            if(clientGone){ next.destroy(); return }
            if(next.statusCode !== 200){ next.destroy(); res.end(); return }
            relay(next, true)
          })
          return
        }
        if(cutting){
          stats.midEventCuts++
          const keep = chunk.length > 1 ? rng.int(1, chunk.length - 1) : 0
          clearTimeout(cutTimer)
          res.write(chunk.subarray(0, keep), () => sock.destroy())
          cutting = false
          source.removeAllListeners("data")
          return
        }
        touch()
        res.write(opts.rewrite ? Buffer.from(opts.rewrite(chunk.toString())) : chunk)
      }
      if(spliced){
        source.on("data", emit)
        source.on("end", () => res.end())
        return
      }
      if(opts.bufferAll){
        stats.buffered++
        const parts = []
        source.on("data", (c) => parts.push(c))
        source.on("end", () => {
          if(clientGone){ return }
          const body = Buffer.concat(parts)
          h["content-length"] = String(body.length)
          res.writeHead(ures.statusCode, h)
          res.end(body)
        })
        return
      }
      res.writeHead(ures.statusCode, h)
      if(opts.bufferBytes){
        stats.chunked++
        let held = []
        let size = 0
        source.on("data", (c) => {
          held.push(c)
          size += c.length
          if(size >= opts.bufferBytes){
            emit(Buffer.concat(held))
            held = []
            size = 0
          }
        })
        source.on("end", () => {
          if(size > 0 && !clientGone){ res.write(Buffer.concat(held)) }
          res.end()
        })
        return
      }
      source.on("data", emit)
      source.on("end", () => res.end())
    }
  })

  await new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => { server.off("error", reject); resolve() })
  })
  const {port} = server.address()
  return {
    url: `http://127.0.0.1:${port}`,
    socketUrl: `http://127.0.0.1:${port}/socket`,
    stats,
    opts,
    log,
    /** Stops accepting and cuts every open connection. */
    close(){
      return new Promise((resolve) => {
        server.close(() => resolve())
        for(const s of sockets){ s.destroy() }
      })
    },
  }
}

function acceptsGzip(req){
  return /\bgzip\b/.test(String(req.headers["accept-encoding"] || ""))
}

function badGateway(res){
  if(res.headersSent){ res.destroy(); return }
  const body = "<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"
  res.writeHead(502, {"content-type": "text/html", "content-length": String(Buffer.byteLength(body))})
  res.end(body)
}
