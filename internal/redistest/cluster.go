package redistest

import (
	"fmt"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/internal/redisurl"
)

// ClusterEnv names the variable that points the Redis tests at a Redis
// Cluster, as a URL of the form `sluice serve --redis` takes for one:
// redis://127.0.0.1:7001?cluster=true&addr=127.0.0.1:7002&addr=127.0.0.1:7003.
// It is a test-only variable: nothing but tests reads it.
const ClusterEnv = "SLUICE_TEST_REDIS_CLUSTER"

// ClusterOptions parses a Redis Cluster URL in the form `sluice serve
// --redis` takes (the cluster=true parameter is optional here).
func ClusterOptions(rawURL string) (*redis.ClusterOptions, error) {
	u, err := redisurl.Parse(rawURL) // its errors never repeat a password
	if err != nil {
		return nil, fmt.Errorf("%s: %w; a Cluster's is e.g. redis://127.0.0.1:7001?cluster=true&addr=127.0.0.1:7002", ClusterEnv, err)
	}
	q := u.Query()
	q.Del("cluster") // sluice's marker for a Cluster; go-redis does not know it
	u.RawQuery = q.Encode()
	opts, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ClusterEnv, err)
	}
	return opts, nil
}

// ClusterOptionsFromEnv returns the options of the Redis Cluster named by
// $SLUICE_TEST_REDIS_CLUSTER, or skips t when that is not set. A fresh copy
// each call: the caller may change it.
func ClusterOptionsFromEnv(t testing.TB) *redis.ClusterOptions {
	t.Helper()
	raw := os.Getenv(ClusterEnv)
	if raw == "" {
		t.Skipf("%s is not set: no Redis Cluster to test against (.ci/run starts one with scripts/redis-cluster.sh)", ClusterEnv)
	}
	opts, err := ClusterOptions(raw)
	if err != nil {
		t.Fatal(err)
	}
	return opts
}
