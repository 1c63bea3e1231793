// Three sluice instances on a Redis Cluster (SLUICE_TEST_REDIS_CLUSTER, a URL in the form
// `sluice serve --redis` takes: redis://127.0.0.1:7001?cluster=true&addr=127.0.0.1:7002&...;
// scripts/redis-cluster.sh starts one) behind the round-robin proxy of rrproxy.mjs: the lobby
// scenario of lobby-kill.mjs with phoenix.js clients over LongPoll, SSE and WebSocket together,
// and a kill -9 of one instance mid-way. The instances' keys must spread over the Cluster's masters
// (sessions, presence and topics hash to different slots) and are deleted at the end.
// Without SLUICE_TEST_REDIS_CLUSTER the file is skipped, except with CI=true, where it fails
// (.ci/run starts a Cluster and sets it).

import {test} from "node:test"
import assert from "node:assert/strict"
import {redisCommands, redisNodes, countKeysPerNode} from "./cluster-helpers.mjs"
import {startProxy} from "./rrproxy.mjs"
import {startInstances, lobbyKillScenario} from "./lobby-kill.mjs"

const CLUSTER_URL = process.env.SLUICE_TEST_REDIS_CLUSTER || ""
const IN_CI = process.env.CI === "true"

test("three instances on a Redis Cluster behind a round-robin proxy, phoenix.js over LongPoll, SSE and WebSocket, kill -9 of one mid-way: every message once and in order, sessions survive, keys spread over the masters", {timeout: 60_000}, async (t) => {
  if(!CLUSTER_URL){
    if(IN_CI){ assert.fail("CI=true but SLUICE_TEST_REDIS_CLUSTER is not set: .ci/run starts a Redis Cluster with scripts/redis-cluster.sh and sets it") }
    t.skip("SLUICE_TEST_REDIS_CLUSTER is not set: start a Cluster with `scripts/redis-cluster.sh start DIR` and set it to the URL printed")
    return
  }
  assert.equal(new URL(CLUSTER_URL).searchParams.get("cluster"), "true", "SLUICE_TEST_REDIS_CLUSTER must say cluster=true, as `sluice serve --redis` needs")
  const masters = await redisNodes(CLUSTER_URL)
  for(const node of masters){
    const [info] = await redisCommands(node, [["CLUSTER", "INFO"]])
    assert.match(info, /^cluster_state:ok/m, `${node}: ${info.slice(0, 200)}`)
  }
  assert.ok(masters.length >= 2, `the Cluster has ${masters.length} master(s)`)

  const group = await startInstances({redisUrl: CLUSTER_URL, label: "rcluster"})
  const rr = await startProxy(group.instances.map((x) => x.base))
  try {
    await lobbyKillScenario({group, label: "Redis Cluster kill -9",
      front: {url: rr.url, failuresAt: (i) => rr.failed[i] + rr.refused[i]},
      clientSpec: [["L1", "longpoll"], ["L2", "sse"], ["L3", "websocket"], ["L4", "sse"], ["S1", "longpoll"], ["S2", "websocket"]]})
    const perNode = await countKeysPerNode(CLUSTER_URL, group.prefix)
    assert.ok(perNode.filter((n) => n > 0).length >= 2, `the instances' keys are not spread over the masters: ${JSON.stringify(perNode)}`)
    console.log(`[Redis Cluster keys] ${JSON.stringify(perNode)} keys of ${group.prefix} on the masters ${JSON.stringify(masters)}; ` +
      `proxy counts ${JSON.stringify(rr.counts)} refused ${JSON.stringify(rr.refused)} failed ${JSON.stringify(rr.failed)}`)
  } finally {
    await rr.close()
    await group.stop()
    await group.cleanKeys()
  }
})
