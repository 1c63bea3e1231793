// handle_in of the seed's SalaChannel: nuevo_mensaje (history, validation), escribiendo, ping.
// Each test uses its own member room so that histories start empty.

import {test, before, after, afterEach} from "node:test"
import assert from "node:assert/strict"
import {
  startServer, openClient, closeAllClients, push, pushOk, pushNoReply, memberRoom, sleep,
} from "./helpers.mjs"

let server
before(async () => { server = await startServer() })
afterEach(closeAllClients)
after(async () => { await closeAllClients(); await server?.stop() })

test("history: after 55 messages a later join gets the last 50, oldest first", {timeout: 30_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const luis = await openClient(server, {name: "Luis"})
  const {topic} = await memberRoom(server, [ana, luis])
  const {channel, reply: first} = await ana.join(topic)
  assert.deepEqual(first.mensajes, [], "a new room has no history")

  // 55 pushes in one tick: phoenix.js sends them in one ndjson POST, in order.
  const texts = Array.from({length: 55}, (_, i) => `mensaje ${i + 1}`)
  await Promise.all(texts.map((contenido) => pushOk(channel, "nuevo_mensaje", {contenido})))
  await channel.rec.waitFor("mensaje_recibido", (m) => m.contenido === "mensaje 55")
  const broadcastOrder = channel.rec.all("mensaje_recibido").map((m) => m.contenido)
  assert.deepEqual(broadcastOrder, texts, "mensaje_recibido broadcasts must arrive in the order sent")

  const {reply} = await luis.join(topic)
  assert.equal(reply.mensajes.length, 50)
  assert.deepEqual(reply.mensajes.map((m) => m.contenido), texts.slice(5), "last 50, oldest first")
  for(const m of reply.mensajes){
    assert.equal(m.autor, "Ana")
    assert.ok(!Number.isNaN(Date.parse(m.timestamp)), `bad timestamp ${m.timestamp}`)
  }
  assert.equal(new Set(reply.mensajes.map((m) => String(m.id))).size, 50, "message ids must be unique")
  // history entries are the same objects that were broadcast
  const byText = new Map(channel.rec.all("mensaje_recibido").map((m) => [m.contenido, m]))
  for(const m of reply.mensajes){ assert.deepEqual(m, byText.get(m.contenido)) }
})

test("invalid nuevo_mensaje gets an error reply with errors.contenido and is neither broadcast nor stored", {timeout: 30_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const luis = await openClient(server, {name: "Luis"})
  const {topic} = await memberRoom(server, [ana, beto, luis])
  const {channel: chA} = await ana.join(topic)
  const {channel: chB} = await beto.join(topic)

  const invalid = [
    ["empty", {contenido: ""}],
    ["whitespace only", {contenido: "  \t\n  "}],
    ["2001 characters", {contenido: "a".repeat(2001)}],
    ["missing contenido", {}],
    ["null contenido", {contenido: null}],
  ]
  for(const [what, payload] of invalid){
    const r = await push(chA, "nuevo_mensaje", payload)
    assert.equal(r.status, "error", `${what}: expected an error reply, got ${r.status} ${JSON.stringify(r.response)}`)
    const errs = r.response && r.response.errors && r.response.errors.contenido
    assert.ok(Array.isArray(errs) && errs.length > 0 && errs.every((e) => typeof e === "string" && e !== ""),
      `${what}: expected {"errors": {"contenido": ["..."]}}, got ${JSON.stringify(r.response)}`)
  }

  // A valid message afterwards is the first (and only) thing either member receives.
  await pushOk(chA, "nuevo_mensaje", {contenido: "marcador"})
  await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === "marcador")
  await chA.rec.waitFor("mensaje_recibido", (m) => m.contenido === "marcador")
  assert.deepEqual(chB.rec.all("mensaje_recibido").map((m) => m.contenido), ["marcador"])
  assert.deepEqual(chA.rec.all("mensaje_recibido").map((m) => m.contenido), ["marcador"])

  const {reply} = await luis.join(topic)
  assert.deepEqual(reply.mensajes.map((m) => m.contenido), ["marcador"], "invalid messages must not be stored")
})

test("nuevo_mensaje at the 2000-character limit is accepted (counted in characters, not bytes)", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const {channel: chA} = await ana.join(topic)
  const {channel: chB} = await beto.join(topic)

  const ascii = "x".repeat(2000)
  await pushOk(chA, "nuevo_mensaje", {contenido: ascii})
  await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === ascii)

  // 2000 characters of Spanish text, 4000 bytes in UTF-8
  const spanish = "ñ".repeat(2000)
  const r = await push(chA, "nuevo_mensaje", {contenido: spanish})
  assert.equal(r.status, "ok", `2000 × "ñ" refused: ${JSON.stringify(r.response)}`)
  const got = await chB.rec.waitFor("mensaje_recibido", (m) => m.contenido === spanish)
  assert.equal(got.contenido.length, 2000)
})

test("escribiendo: usuario_escribiendo reaches the other member, not the sender, and gets no reply", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const beto = await openClient(server, {name: "Beto"})
  const {topic} = await memberRoom(server, [ana, beto])
  const {channel: chA} = await ana.join(topic)
  const {channel: chB} = await beto.join(topic)

  pushNoReply(chA, "escribiendo", {})
  const typing = await chB.rec.waitFor("usuario_escribiendo")
  assert.deepEqual(typing, {user_id: ana.userId})

  // the sender must not get it back; give it a moment to show up if it were sent
  await pushOk(chA, "ping", {})
  await sleep(500)
  assert.deepEqual(chA.rec.all("usuario_escribiendo"), [], "the sender received its own usuario_escribiendo")
  assert.equal(chA.rec.all("phx_reply").filter((r) => r.status !== "ok").length, 0)
  assert.equal(chB.rec.all("usuario_escribiendo").length, 1)
})

test("ping replies ok with the same payload", {timeout: 20_000}, async () => {
  const ana = await openClient(server, {name: "Ana"})
  const {channel} = await ana.join("sala:lobby")
  const payload = {texto: "¿qué tal?", n: 7, lista: [1, "dos", null, true], anidado: {a: {b: "c"}}}
  assert.deepEqual(await pushOk(channel, "ping", payload), payload)
  assert.deepEqual(await pushOk(channel, "ping", {}), {})
})
