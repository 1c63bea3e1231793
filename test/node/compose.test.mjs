// deploy/compose.yaml, checked without a Docker engine (none runs in CI): it parses (npm `yaml`,
// with YAML merge keys as Compose reads them), builds one image once and runs it three times,
// starts the instances once Redis is healthy and nginx once the three instances are healthy
// (the image's HEALTHCHECK runs `sluice healthcheck`), and fits deploy/nginx.conf: the upstream
// servers are the instances on the image's port, every location passes the client's X-Request-ID.
// cluster-nginx.test.mjs runs that nginx.conf for real.

import {test} from "node:test"
import assert from "node:assert/strict"
import fs from "node:fs"
import path from "node:path"
import {parseDocument} from "yaml"
import {REPO_ROOT} from "./helpers.mjs"

const DEPLOY = path.join(REPO_ROOT, "deploy")
const read = (...p) => fs.readFileSync(path.join(...p), "utf8")

/** A service without what only the building instance has. */
function alike(service){
  const {build: _build, pull_policy: _pull, ...rest} = service
  return rest
}

function loadCompose(){
  const doc = parseDocument(read(DEPLOY, "compose.yaml"), {merge: true, prettyErrors: true})
  assert.deepEqual(doc.errors.map(String), [], "deploy/compose.yaml does not parse")
  assert.deepEqual(doc.warnings.map(String), [], "deploy/compose.yaml parses with warnings")
  return doc.toJS({maxAliasCount: 100})
}

test("deploy/compose.yaml: one image built once and run three times; instances start once Redis is healthy, nginx once the instances are healthy", () => {
  const compose = loadCompose()
  const services = compose.services
  assert.deepEqual(Object.keys(services).sort(), ["proxy", "redis", "sluice1", "sluice2", "sluice3"])
  const instances = Object.keys(services).filter((n) => /^sluice\d+$/.test(n))

  // built once: one service has a build (the repository, whose Dockerfile it is), all run its image
  const builders = Object.entries(services).filter(([, s]) => s.build !== undefined)
  assert.deepEqual(builders.map(([n]) => n), ["sluice1"], "exactly one service builds the image")
  const context = path.resolve(DEPLOY, typeof builders[0][1].build === "string" ? builders[0][1].build : builders[0][1].build.context)
  assert.equal(context, REPO_ROOT)
  assert.ok(fs.existsSync(path.join(context, "Dockerfile")))
  for(const n of instances){
    assert.equal(services[n].image, "sluice:local", `${n} runs the image built once`)
    if(n !== "sluice1"){ assert.equal(services[n].pull_policy, "never", `${n} must not look sluice:local up in a registry`) }
    // the three instances are alike but for the build
    assert.deepEqual(alike(services[n]), alike(services.sluice1), `${n} differs from sluice1`)
  }

  // instances wait for a healthy Redis; Redis has a health check
  assert.ok(services.redis.healthcheck?.test?.includes("ping"), JSON.stringify(services.redis.healthcheck))
  for(const n of instances){
    assert.deepEqual(services[n].depends_on, {redis: {condition: "service_healthy"}}, `${n}.depends_on`)
    assert.equal(services[n].environment.SLUICE_REDIS, "redis://redis:6379/0")
    assert.match(services[n].environment.SLUICE_SECRET, /^\$\{SLUICE_SECRET:\?/, "the secret is required, never defaulted")
  }
  // nginx waits for three healthy instances; their health check is the image's (not disabled here)
  assert.deepEqual(services.proxy.depends_on, Object.fromEntries(instances.map((n) => [n, {condition: "service_healthy"}])))
  for(const n of instances){ assert.equal(services[n].healthcheck, undefined, `${n}: the image's HEALTHCHECK applies`) }
  const dockerfile = read(REPO_ROOT, "Dockerfile")
  assert.match(dockerfile, /^HEALTHCHECK .*\\\n\s*CMD \["\/usr\/local\/bin\/sluice", "healthcheck", "--url", "http:\/\/127\.0\.0\.1:4000\/healthz"\]/m)
  assert.match(dockerfile, /^ENV SLUICE_ADDR=:4000$/m)
})

test("deploy/compose.yaml and deploy/nginx.conf fit: the upstreams are the instances on the image's port, the config is mounted and listens where published, every location passes X-Request-ID", () => {
  const compose = loadCompose()
  const proxy = compose.services.proxy
  assert.match(proxy.image, /^nginx:/)
  assert.ok(proxy.volumes.includes("./nginx.conf:/etc/nginx/nginx.conf:ro"), JSON.stringify(proxy.volumes))
  assert.deepEqual(proxy.ports, ["8080:8080"])

  const conf = read(DEPLOY, "nginx.conf")
  const servers = [...conf.matchAll(/^\s*server\s+(\S+);/gm)].map((m) => m[1])
  const instances = Object.keys(compose.services).filter((n) => /^sluice\d+$/.test(n))
  assert.deepEqual(servers, instances.map((n) => `${n}:4000`))
  assert.match(conf, /^\s*listen 8080;/m)
  // a client's X-Request-ID passes through, else nginx's own; every location sends it
  assert.match(conf, /map \$http_x_request_id \$req_id \{\s*default\s+\$http_x_request_id;\s*""\s+\$request_id;\s*\}/)
  const locations = conf.match(/^\s*location /gm).length
  assert.equal(conf.match(/proxy_set_header X-Request-ID \$req_id;/g).length, locations, "a location without X-Request-ID")
  assert.doesNotMatch(conf, /\$request_uri|\$request\b|\$args|\$query_string/, "nginx.conf logs or passes the query string (tokens) somewhere")
})
