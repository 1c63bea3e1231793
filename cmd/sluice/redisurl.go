package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/internal/redisurl"
)

// newRedisClient connects to the Redis deployment a URL names:
//
//	redis://[user:pass@]host:port[/db]                      a standalone server (rediss:// for TLS)
//	redis://host:port?master_name=mymaster&addr=host2:port  Sentinel: the sentinels, and the master's name
//	redis://host:port?cluster=true&addr=host2:port          Cluster: some of its nodes
//
// Other query parameters are go-redis's (dial_timeout, pool_size, ...).
// Unless the URL sets them, timeouts are short and retries few, so that a
// request fails fast with 503 while Redis is unreachable instead of hanging.
func newRedisClient(rawURL string) (redis.UniversalClient, string, error) {
	u, err := redisurl.Parse(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("--redis: %w", err)
	}
	q := u.Query()
	for k, v := range map[string]string{"dial_timeout": "1s", "read_timeout": "2s", "write_timeout": "2s", "pool_timeout": "2s", "max_retries": "1"} {
		if !q.Has(k) {
			q.Set(k, v)
		}
	}
	u.RawQuery = q.Encode()
	rawURL = u.String()
	switch {
	case q.Get("cluster") == "true":
		q.Del("cluster")
		u.RawQuery = q.Encode()
		opts, err := redis.ParseClusterURL(u.String())
		if err != nil {
			return nil, "", fmt.Errorf("--redis (Cluster): %w", err)
		}
		return redis.NewClusterClient(opts), "cluster", nil
	case q.Has("master_name"):
		opts, err := redis.ParseFailoverURL(rawURL)
		if err != nil {
			return nil, "", fmt.Errorf("--redis (Sentinel): %w", err)
		}
		return redis.NewFailoverClient(opts), "sentinel", nil
	}
	opts, err := redis.ParseURL(rawURL)
	if err != nil {
		return nil, "", fmt.Errorf("--redis: %w", err)
	}
	return redis.NewClient(opts), "standalone", nil
}

// redisLogger routes go-redis's own log lines into the structured log.
type redisLogger struct{ log *slog.Logger }

// Printf implements go-redis's internal.Logging.
func (l redisLogger) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client: "+fmt.Sprintf(format, v...))
}

// permanentRedisError reports whether err, from a first command to Redis,
// is one that waiting will not fix: Redis answered and refused the
// connection's setup (a database it does not have, a wrong password, a
// command it does not know), or TLS was spoken to a server that does not
// speak it. A Redis that is down, unreachable, loading its data or failing
// over is worth retrying.
func permanentRedisError(err error) bool {
	var tlsErr tls.RecordHeaderError
	if errors.As(err, &tlsErr) {
		return true
	}
	var rerr redis.Error
	if !errors.As(err, &rerr) {
		return false // network: down or unreachable
	}
	msg := rerr.Error()
	for _, transient := range []string{"LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "READONLY", "MOVED", "ASK", "MISCONF"} {
		if strings.HasPrefix(msg, transient) {
			return false
		}
	}
	return true
}
