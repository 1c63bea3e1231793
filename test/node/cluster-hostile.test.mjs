// The seed scenario through a hostile proxy (hostile-proxy.mjs) in front of two sluice instances
// sharing one Redis (SLUICE_TEST_REDIS, default redis://127.0.0.1:6379/0): the proxy sends each request
// to the next instance in turn, so every poll, POST and resumed stream may land on either. Same
// checks as hostile.test.mjs: every published message reaches every client of the module exactly
// once, in order per sender, with no reconnect; stock phoenix.js LongPoll is as good where no
// response is lost. The /api/broadcast messages alternate between the instances.
//
// HOSTILE_SEED=<seed> repeats a run's draws (the seed is printed first). Each run uses a fresh
// key prefix and deletes its keys.

import {test, after} from "node:test"
import assert from "node:assert/strict"
import {execFileSync} from "node:child_process"
import {randomBytes} from "node:crypto"
import {SLUICE_BIN, SHORT} from "./helpers.mjs"
import {startInstance, deleteKeysWithPrefix, MAIN_REDIS_URL} from "./cluster-helpers.mjs"
import {seededRandom, suiteSeed} from "./hostile-proxy.mjs"
import {HOSTILITIES, SERVER_FLAGS, TOPIC, runScenario, problems, summarize, reportTable} from "./hostile-scenario.mjs"

const seed = suiteSeed("hostile, two instances on Redis")
const rows = []
after(() => { if(rows.length){ console.log(reportTable("hostile, two instances, Redis", seed, rows)) } })

/** Two instances on one fresh Redis prefix, and a helpers.mjs-style server object for tokens and broadcasts. */
async function startPair(label, extraArgs){
  const prefix = `sluicetest:hostile:${label}:${randomBytes(5).toString("hex")}:`
  const secret = randomBytes(32).toString("hex")
  const apiKey = randomBytes(16).toString("hex")
  const instances = []
  try {
    for(let i = 0; i < 2; i++){
      instances.push(await startInstance({name: `sluice-${i}`, redisUrl: MAIN_REDIS_URL, prefix, secret, apiKey, extraArgs}))
    }
  } catch(e){
    await Promise.all(instances.map((x) => x.stop()))
    await deleteKeysWithPrefix(MAIN_REDIS_URL, prefix).catch(() => {})
    throw e
  }
  let turn = 0
  const server = {
    token(userId, name){
      const args = ["token", "--secret", secret, "--user", String(userId)]
      if(name !== undefined){ args.push("--name", name) }
      return execFileSync(SLUICE_BIN, args, {encoding: "utf8", timeout: 10_000}).trim()
    },
    // straight to an instance, each in turn
    async broadcast(payload){
      const base = instances[turn++ % instances.length].base
      const res = await fetch(`${base}/api/broadcast`, {
        method: "POST", headers: {authorization: `Bearer ${apiKey}`, "content-type": "application/json"},
        body: JSON.stringify({topic: TOPIC, event: "anuncio", payload}), signal: AbortSignal.timeout(SHORT),
      })
      const text = await res.text()
      if(res.status < 200 || res.status > 299){ throw new Error(`POST /api/broadcast -> ${res.status} ${text}`) }
    },
  }
  return {
    instances, server, upstreams: instances.map((x) => x.base),
    async stop(){
      await Promise.all(instances.map((x) => x.stop()))
      await deleteKeysWithPrefix(MAIN_REDIS_URL, prefix)
    },
  }
}

for(const [i, h] of HOSTILITIES.entries()){
  test(`two instances, lossless through a proxy that does: ${h.name}`, {timeout: 120_000}, async () => {
    const pair = await startPair(`h${i}`, [...SERVER_FLAGS, ...h.server])
    try {
      const run = await runScenario({
        server: pair.server, upstreams: pair.upstreams, hostility: h, seed: seededRandom(seed).fork(`cluster ${h.name}`).seed,
        broadcast: (payload) => pair.server.broadcast(payload),
      })
      rows.push({hostility: h.name, summary: summarize(run), proxy: run.proxy})
      assert.ok(h.bites(run.proxy), `the proxy did not do what it should: ${JSON.stringify(run.proxy)}`)
      assert.deepEqual(problems(h, run), [], `seed ${seed}: ${JSON.stringify(run.results.map(({missedIds, ...r}) => r))}`)
    } finally {
      await pair.stop()
    }
  })
}
