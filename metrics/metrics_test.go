package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

func TestObserverCountsShowInTheScrape(t *testing.T) {
	m := New()
	m.SessionStarted()
	m.SessionEnded("expired")
	m.Joined("sala:*", "ok")
	m.Joined("sala:*", "error")
	m.Received("sse", 3)
	m.Delivered("longpoll", "broadcast", 20*time.Millisecond)
	m.Delivered("longpoll", "reply", time.Millisecond)
	m.Open("sse", 1)
	m.Open("sse", 1)
	m.Open("sse", -1)
	m.Refused("longpoll", "unauthorized")
	m.Resumed("sse")
	m.Gap()
	out := scrape(t, m)
	for _, want := range []string{
		`sluice_sessions_started_total 1`,
		`sluice_sessions_ended_total{reason="expired"} 1`,
		`sluice_joins_total{outcome="ok",pattern="sala:*"} 1`,
		`sluice_joins_total{outcome="error",pattern="sala:*"} 1`,
		`sluice_messages_in_total{transport="sse"} 3`,
		`sluice_messages_out_total{kind="broadcast",transport="longpoll"} 1`,
		`sluice_delivery_latency_seconds_count 1`, // replies are not broadcast latency
		`sluice_delivery_latency_seconds_bucket{le="0.025"} 1`,
		`sluice_open_requests{transport="sse"} 1`,
		`sluice_requests_refused_total{reason="unauthorized",transport="longpoll"} 1`,
		`sluice_resumes_total{transport="sse"} 1`,
		`sluice_gaps_total 1`,
		`go_goroutines`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q", want)
		}
	}
}

func TestRedisHookTimesCommandsAndCountsRealErrors(t *testing.T) {
	mr := miniredis.RunT(t)
	m := New()
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer c.Close()
	c.AddHook(m.RedisHook())
	ctx := context.Background()
	c.Set(ctx, "k", "v", 0)
	if err := c.Get(ctx, "missing").Err(); !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	c.Pipelined(ctx, func(p redis.Pipeliner) error { p.Get(ctx, "k"); p.Get(ctx, "k"); return nil })
	mr.Close() // Redis goes away
	_ = c.Get(ctx, "k").Err()
	out := scrape(t, m)
	for _, want := range []string{
		`sluice_redis_command_duration_seconds_count{command="set"} 1`,
		`sluice_redis_command_duration_seconds_count{command="pipeline"}`,
		`sluice_redis_errors_total{command="get"} 1`, // the outage, not the missing key
	} {
		if !strings.Contains(out, want) {
			t.Errorf("scrape lacks %q\n%s", want, grepSluice(out))
		}
	}
}

func grepSluice(s string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "sluice_redis") && !strings.Contains(l, "_bucket") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
