package topics_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/sluicegw/sluice/internal/redistest"
	"github.com/sluicegw/sluice/topics"
	"github.com/sluicegw/sluice/topics/brokertest"
)

var _ topics.Broker = (*topics.RedisBroker)(nil)

// --- backends ---

// backend is a Redis server the tests run against.
type backend struct {
	name string
	// opts returns client options for a single server (nil for a Cluster);
	// the caller may change them.
	opts func() *redis.Options
	// cluster returns the options of a Cluster (nil for a single server); the
	// caller may change them.
	cluster func() *redis.ClusterOptions
	// mini is the in-process server, nil for a real Redis.
	mini *miniredis.Miniredis
}

// client returns a client of be, closed when t ends, with the given hooks.
func (be *backend) client(t testing.TB, hooks ...redis.Hook) redis.UniversalClient {
	t.Helper()
	if be.cluster != nil {
		c := redis.NewClusterClient(be.cluster())
		for _, h := range hooks {
			c.AddHook(h)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	return be.clientWith(t, func(*redis.Options) {}, hooks...)
}

// clientWith is client for a single server, with options changed by change.
func (be *backend) clientWith(t testing.TB, change func(*redis.Options), hooks ...redis.Hook) redis.UniversalClient {
	t.Helper()
	o := be.opts()
	change(o)
	c := redis.NewClient(o)
	for _, h := range hooks {
		c.AddHook(h)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// forEachBackend runs fn as a subtest against a fresh miniredis, against the
// real Redis at SLUICE_TEST_REDIS when that is set, and against the Redis Cluster at
// $SLUICE_TEST_REDIS_CLUSTER (see redistest.ClusterEnv) when that is set.
func forEachBackend(t *testing.T, fn func(t *testing.T, be *backend)) {
	t.Helper()
	t.Run("miniredis", func(t *testing.T) {
		m := miniredis.RunT(t)
		fn(t, &backend{name: "miniredis", mini: m, opts: func() *redis.Options { return &redis.Options{Addr: m.Addr()} }})
	})
	t.Run("redis", func(t *testing.T) {
		url := os.Getenv("SLUICE_TEST_REDIS")
		if url == "" {
			t.Skip("SLUICE_TEST_REDIS is not set (CI sets it, e.g. redis://127.0.0.1:6379/0)")
		}
		if _, err := redis.ParseURL(url); err != nil {
			t.Fatalf("SLUICE_TEST_REDIS: %v", err)
		}
		fn(t, &backend{name: "redis", opts: func() *redis.Options { o, _ := redis.ParseURL(url); return o }})
	})
	t.Run("cluster", func(t *testing.T) {
		redistest.ClusterOptionsFromEnv(t) // skips when unset, fails on a bad URL
		fn(t, &backend{name: "cluster", cluster: func() *redis.ClusterOptions { return redistest.ClusterOptionsFromEnv(t) }})
	})
}

// randomPrefix returns a key prefix no other test run uses.
func randomPrefix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "sluicetest:" + hex.EncodeToString(b[:]) + ":"
}

// newRedisBroker returns a broker on client with a random prefix (unless
// opts has one) whose keys are deleted when t ends.
func newRedisBroker(t testing.TB, client redis.UniversalClient, opts topics.RedisOptions) *topics.RedisBroker {
	t.Helper()
	if opts.Prefix == "" {
		opts.Prefix = randomPrefix()
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	t.Cleanup(func() { deleteKeys(t, client, opts.Prefix) })
	return topics.NewRedisBroker(client, opts)
}

// deleteKeys deletes every key starting with prefix.
func deleteKeys(t testing.TB, client redis.UniversalClient, prefix string) {
	t.Helper()
	ctx := context.Background()
	keys, err := scanKeys(ctx, client, prefix)
	if err != nil {
		t.Logf("cleaning keys %s*: %v", prefix, err)
		return
	}
	// One DEL per key: a Cluster refuses a DEL of keys on several slots.
	_, err = client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, k)
		}
		return nil
	})
	if err != nil {
		t.Logf("cleaning keys %s*: %v", prefix, err)
	}
}

// scanKeys returns the keys starting with prefix, sorted, from every master
// of a Cluster or from the one server.
func scanKeys(ctx context.Context, client redis.UniversalClient, prefix string) ([]string, error) {
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, c redis.UniversalClient) error {
		it := c.Scan(ctx, 0, globEscape(prefix)+"*", 1000).Iterator()
		for it.Next(ctx) {
			mu.Lock()
			keys = append(keys, it.Val())
			mu.Unlock()
		}
		return it.Err()
	}
	var err error
	if cc, ok := client.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, client)
	}
	slices.Sort(keys)
	return keys, err
}

// globEscape escapes the glob characters of s for SCAN MATCH.
func globEscape(s string) string {
	return strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`).Replace(s)
}

// startRun runs b.Run until t ends, and checks that it returns nil.
func startRun(t testing.TB, b *topics.RedisBroker) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run returned %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return within 10s of its context being cancelled")
		}
	})
}

// startRunReady is startRun, returning once Run has subscribed (it then
// wakes every listener, here a private one).
func startRunReady(t testing.TB, b *topics.RedisBroker) {
	t.Helper()
	l := b.Listen("test:run-ready")
	defer l.Close()
	startRun(t, b)
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not subscribe within 10s")
	}
}

// noLeaks checks, when t ends, that no goroutine started during t is left.
// Call it first, so that its check runs after every other cleanup.
func noLeaks(t *testing.T) {
	t.Helper()
	ignore := goleak.IgnoreCurrent()
	t.Cleanup(func() { goleak.VerifyNone(t, ignore) })
}

// waitFor waits for a wake-up on l.
func waitFor(t *testing.T, l *topics.Listener, what string) {
	t.Helper()
	select {
	case <-l.C:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: no wake-up within 10s", what)
	}
}

// waitUpTo reports whether l is woken within d.
func waitUpTo(l *topics.Listener, d time.Duration) bool {
	select {
	case <-l.C:
		return true
	case <-time.After(d):
		return false
	}
}

func drainListener(l *topics.Listener) {
	for {
		select {
		case <-l.C:
		default:
			return
		}
	}
}

func pending(l *topics.Listener) bool {
	select {
	case <-l.C:
		return true
	default:
		return false
	}
}

// --- conformance ---

func TestRedisBrokerConformance(t *testing.T) {
	noLeaks(t)
	forEachBackend(t, func(t *testing.T, be *backend) {
		client := be.client(t)
		brokertest.Run(t, func(t *testing.T, maxLen int, budgets ...topics.ByteBudget) topics.Broker {
			b := newRedisBroker(t, client, topics.RedisOptions{MaxLen: maxLen, ByteBudgets: budgets})
			// With Run, the listener tests also see the (ignored) echoes of
			// pub/sub. Run wakes every listener when it has subscribed; that
			// happens before the suite listens, as its wake-ups must be real.
			startRunReady(t, b)
			return b
		})
	})
}

// --- Redis-specific behaviour ---

// Two brokers on one Redis are two instances of the gateway: a publish on one
// wakes the other's listeners through pub/sub, and its records are read there.
func TestRedisBrokerTwoInstances(t *testing.T) {
	noLeaks(t)
	forEachBackend(t, func(t *testing.T, be *backend) {
		prefix := randomPrefix()
		a := newRedisBroker(t, be.client(t), topics.RedisOptions{Prefix: prefix})
		b := newRedisBroker(t, be.client(t), topics.RedisOptions{Prefix: prefix})
		// A listener made before Run is woken once Run has subscribed: from
		// then on, pub/sub wake-ups reach the broker.
		readyA, readyB := a.Listen("t:ready"), b.Listen("t:ready")
		defer readyA.Close()
		defer readyB.Close()
		startRun(t, a)
		startRun(t, b)
		waitFor(t, readyA, "a subscribed")
		waitFor(t, readyB, "b subscribed")

		ctx := t.Context()
		const topic = "t:sala:lobby"
		h, err := b.Head(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		lb := b.Listen(topic)
		defer lb.Close()
		la := a.Listen(topic)
		defer la.Close()
		last, err := a.Publish(ctx, topic, []byte("hola"), []byte("mundo"))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, lb, "instance b, after a publish on instance a")
		waitFor(t, la, "instance a, after its own publish")
		batch, err := b.Read(ctx, topic, h, 100)
		if err != nil {
			t.Fatal(err)
		}
		wantRecords(t, "b reads a's records", batch, h+1, [][]byte{[]byte("hola"), []byte("mundo")}, false)
		if batch.Head != last {
			t.Errorf("b reads Head %d, a's publish returned %d", batch.Head, last)
		}

		// A broker ignores the echo of its own publish (it woke its listeners
		// already). Messages on the channel arrive in order, so once a has
		// heard b's later publish, the echo of its own has been handled.
		probe := a.Listen("t:probe")
		defer probe.Close()
		drainListener(la)
		if _, err := a.Publish(ctx, topic, []byte("again")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, la, "a's own publish")
		waitFor(t, lb, "b, after a's second publish")
		if _, err := b.Publish(ctx, "t:probe", []byte("p")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, probe, "a, after b's publish")
		if pending(la) {
			t.Errorf("a's listener was woken again by the echo of a's own publish")
		}
	})
}

// Topic names are arbitrary strings: braces cannot break the hash tag that
// keeps a topic's keys on one Cluster slot, and distinct names stay distinct
// topics even when one is the escape of another.
func TestRedisBrokerTopicNames(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		client := be.client(t)
		prefix := randomPrefix()
		b := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix})
		ctx := t.Context()
		names := []string{
			"", "{", "}", "{}", "}{", "a{b}c", "{a}", "%7B", "%7D", "%", "%25", "t:sala:{x}",
			"sala:lobby", ":", "::", "m:session:1", "héllo мир 世界 🌍", "with space", "new\nline", "\x00nul", "*", "[a-z]?",
		}
		heads := make(map[string]uint64)
		for i, n := range names {
			h, err := b.Head(ctx, n)
			if err != nil {
				t.Fatalf("Head(%q): %v", n, err)
			}
			heads[n] = h
			if _, err := b.Publish(ctx, n, fmt.Appendf(nil, "%d", i), []byte(n)); err != nil {
				t.Fatalf("Publish(%q): %v", n, err)
			}
		}
		for i, n := range names {
			batch, err := b.Read(ctx, n, heads[n], 100)
			if err != nil {
				t.Fatalf("Read(%q): %v", n, err)
			}
			wantRecords(t, fmt.Sprintf("topic %q", n), batch, heads[n]+1, [][]byte{fmt.Appendf(nil, "%d", i), []byte(n)}, false)
		}

		// Every key has exactly one non-empty hash tag, shared by the topic's
		// two keys and by no other topic's.
		keys, err := scanKeys(ctx, client, prefix)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) != 2*len(names) {
			t.Fatalf("%d keys for %d topics, want 2 per topic: %q", len(keys), len(names), keys)
		}
		tags := make(map[string][]string)
		for _, k := range keys {
			tag, ok := hashTag(k)
			if !ok {
				t.Errorf("key %q has no hash tag: it could land on any slot", k)
				continue
			}
			tags[tag] = append(tags[tag], strings.TrimPrefix(k, prefix))
		}
		if len(tags) != len(names) {
			t.Errorf("%d hash tags for %d topics", len(tags), len(names))
		}
		for tag, ks := range tags {
			if len(ks) != 2 || !strings.HasSuffix(ks[0], ":log") || !strings.HasSuffix(ks[1], ":seq") {
				t.Errorf("hash tag %q holds keys %q, want one log and one seq", tag, ks)
			}
		}
		if _, ok := tags["sala:lobby"]; !ok {
			t.Errorf("plain topic names should stay readable in keys: no tag %q among %q", "sala:lobby", keys)
		}
	})
}

// hashTag returns the part of key that Redis Cluster hashes, if it is a tag.
func hashTag(key string) (string, bool) {
	_, rest, ok := strings.Cut(key, "{")
	if !ok {
		return "", false
	}
	tag, _, ok := strings.Cut(rest, "}")
	if !ok || tag == "" {
		return "", false
	}
	return tag, true
}

// A broadcast costs O(1) Redis commands whatever the number of records or
// of subscribers: Publish is one command, and so are Read and Head; ReadMany
// is one round trip (one pipeline) for any number of topics.
func TestRedisBrokerRoundTrips(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		var c redistest.Counter
		b := newRedisBroker(t, be.client(t, &c), topics.RedisOptions{MaxLen: 100})
		ctx := t.Context()
		const topic = "t:rt"
		// Warm up: the connections, and the servers' script caches (a server
		// that does not have a script yet answers EVALSHA with NOSCRIPT and
		// gets EVAL: a second command, once). Run loads the scripts on every
		// shard when it subscribes, and then uses the client no more.
		startRunReady(t, b)
		h, err := b.Head(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Publish(ctx, topic, []byte("warm")); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Read(ctx, topic, h, 10); err != nil {
			t.Fatal(err)
		}
		if _, err := b.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: h}}); err != nil {
			t.Fatal(err)
		}

		// Subscribers are local listeners: they cost Redis nothing.
		for range 100 {
			defer b.Listen(topic).Close()
		}
		for _, n := range []int{0, 1, 10, 500} {
			calls, cmds := c.Measure(func() {
				if _, err := b.Publish(ctx, topic, numbered(0, n)...); err != nil {
					t.Fatal(err)
				}
			})
			if calls != 1 || cmds != 1 {
				t.Errorf("Publish of %d records to a topic with 100 listeners: %d round trips, %d commands; want 1 and 1", n, calls, cmds)
			}
		}
		calls, cmds := c.Measure(func() {
			if _, err := b.Read(ctx, topic, h, 100); err != nil {
				t.Fatal(err)
			}
		})
		if calls != 1 || cmds != 1 {
			t.Errorf("Read: %d round trips, %d commands; want 1 and 1", calls, cmds)
		}
		calls, cmds = c.Measure(func() {
			if _, err := b.Head(ctx, "t:rt-new"); err != nil {
				t.Fatal(err)
			}
		})
		if calls != 1 || cmds != 1 {
			t.Errorf("Head of a new topic: %d round trips, %d commands; want 1 and 1", calls, cmds)
		}
		reqs := []topics.ReadRequest{{Topic: "m:session"}, {Topic: topic, After: h, Limit: 5}, {Topic: "t:a"}, {Topic: "t:b", After: 7}, {Topic: "t:c"}}
		calls, cmds = c.Measure(func() {
			if _, err := b.ReadMany(ctx, reqs); err != nil {
				t.Fatal(err)
			}
		})
		if calls != 1 || cmds != int64(len(reqs)) {
			t.Errorf("ReadMany of %d topics: %d round trips, %d commands; want 1 and %d", len(reqs), calls, cmds, len(reqs))
		}
	})
}

// After the script cache is flushed (a restart, a failover to a server that
// never ran the scripts), calls still work: EVALSHA fails with NOSCRIPT, which
// executed nothing, and EVAL follows. SCRIPT FLUSH would disturb other users
// of a shared server, so this runs on servers of its own.
func TestRedisBrokerScriptCacheFlushed(t *testing.T) {
	forEachPrivateBackend(t, func(t *testing.T, be *backend) {
		var c redistest.Counter
		client := be.client(t, &c)
		b := newRedisBroker(t, client, topics.RedisOptions{})
		ctx := t.Context()
		flush := func() {
			t.Helper()
			if err := client.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		}
		const topic = "t:flushed"
		h := mustHead(t, b, topic)
		mustPublish(t, b, topic, []byte("before"))
		flush()
		calls, _ := c.Measure(func() { mustPublish(t, b, topic, []byte("after")) })
		if calls != 2 {
			t.Errorf("first Publish after SCRIPT FLUSH: %d calls, want 2 (EVALSHA, then EVAL)", calls)
		}
		want := [][]byte{[]byte("before"), []byte("after")}
		flush()
		batches, err := b.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: h}, {Topic: "t:none"}})
		if err != nil {
			t.Fatal(err)
		}
		wantRecords(t, "ReadMany after SCRIPT FLUSH", batches[0], h+1, want, false)
		flush()
		wantRecords(t, "Read after SCRIPT FLUSH", mustRead(t, b, topic, h, 10), h+1, want, false)
		flush()
		if got := mustHead(t, b, topic); got != h+2 {
			t.Errorf("Head after SCRIPT FLUSH = %d, want %d", got, h+2)
		}
	})
}

// forEachPrivateBackend runs fn as a subtest against a fresh miniredis, and
// against a redis-server started for it if there is one on PATH.
func forEachPrivateBackend(t *testing.T, fn func(t *testing.T, be *backend)) {
	t.Helper()
	t.Run("miniredis", func(t *testing.T) {
		m := miniredis.RunT(t)
		fn(t, &backend{name: "miniredis", mini: m, opts: func() *redis.Options { return &redis.Options{Addr: m.Addr()} }})
	})
	t.Run("redis-server", func(t *testing.T) {
		srv := startRedisServer(t)
		fn(t, &backend{name: "redis-server", opts: func() *redis.Options { return &redis.Options{Addr: srv.addr} }})
	})
}

// ReadMany returns what the same Reads return, in the order asked.
func TestRedisBrokerReadMany(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		b := newRedisBroker(t, be.client(t), topics.RedisOptions{MaxLen: 5})
		ctx := t.Context()
		ha := mustHead(t, b, "t:a")
		mustPublish(t, b, "t:a", numbered(1, 3)...)
		hb := mustHead(t, b, "t:b")
		mustPublish(t, b, "t:b", numbered(1, 9)...) // 4 dropped
		hm := mustHead(t, b, "m:s")
		reqs := []topics.ReadRequest{
			{Topic: "t:a", After: ha},
			{Topic: "t:b", After: hb, Limit: 2}, // behind the bounded log
			{Topic: "t:b", After: hb + 6},
			{Topic: "m:s", After: hm},         // at the head
			{Topic: "t:never", After: 0},      // unknown topic
			{Topic: "t:never2", After: 12345}, // cursor of a forgotten topic
			{Topic: "t:a", After: ha + 1, Limit: 1},
			{Topic: "t:a", After: ha + 100}, // cursor from the future
		}
		got, err := b.ReadMany(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(reqs) {
			t.Fatalf("ReadMany returned %d batches for %d requests", len(got), len(reqs))
		}
		for i, r := range reqs {
			want := mustRead(t, b, r.Topic, r.After, r.Limit)
			if fmt.Sprint(got[i]) != fmt.Sprint(want) {
				t.Errorf("ReadMany[%d] (%+v) = %+v, Read = %+v", i, r, got[i], want)
			}
		}
		wantRecords(t, "t:b behind", got[1], hb+5, numbered(5, 2), true)
		if empty, err := b.ReadMany(ctx, nil); err != nil || len(empty) != 0 {
			t.Errorf("ReadMany(nil) = %v, %v; want nothing", empty, err)
		}
	})
}

// Sequences near the current time in microseconds (about 1.8e15) and up to
// 2^53 come back exact: the scripts never print a number in exponent form.
func TestRedisBrokerLargeSequences(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		client := be.client(t)
		prefix := randomPrefix()
		b := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix, MaxLen: 10})
		ctx := t.Context()
		for _, start := range []uint64{1_799_999_999_999_999, 1<<53 - 100} {
			topic := fmt.Sprintf("t:big:%d", start)
			if err := client.Set(ctx, prefix+"{"+topic+"}:seq", start, 0).Err(); err != nil {
				t.Fatal(err)
			}
			if h := mustHead(t, b, topic); h != start {
				t.Fatalf("Head = %d, want %d", h, start)
			}
			last := mustPublish(t, b, topic, numbered(1, 15)...)
			if last != start+15 {
				t.Errorf("Publish of 15 after %d returned %d, want %d", start, last, start+15)
			}
			wantRecords(t, fmt.Sprintf("from %d", start), mustRead(t, b, topic, start+5, 100), start+6, numbered(6, 10), false)
			ids, err := client.XRange(ctx, prefix+"{"+topic+"}:log", "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			for i, m := range ids {
				if want := strconv.FormatUint(start+6+uint64(i), 10) + "-0"; m.ID != want {
					t.Errorf("stream entry %d has ID %q, want %q", i, m.ID, want)
				}
			}
		}
	})
}

// The log's TTL is the retention and the counter's much longer; Delete and
// expiry remove the log only, so a topic used again numbers above its old
// records and old cursors read as a Gap.
func TestRedisBrokerRetention(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		client := be.client(t)
		prefix := randomPrefix()
		const retention = 2 * time.Hour
		b := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix, Retention: retention})
		ctx := t.Context()
		const topic = "t:ttl"
		seqKey, logKey := prefix+"{"+topic+"}:seq", prefix+"{"+topic+"}:log"
		h := mustHead(t, b, topic)
		if ttl := client.PTTL(ctx, seqKey).Val(); ttl < 23*time.Hour || ttl > 24*time.Hour {
			t.Errorf("counter TTL after Head = %v, want 24h (10 × 2h retention is less than a day)", ttl)
		}
		last := mustPublish(t, b, topic, numbered(1, 3)...)
		if ttl := client.PTTL(ctx, logKey).Val(); ttl < retention-time.Minute || ttl > retention {
			t.Errorf("log TTL = %v, want %v", ttl, retention)
		}
		if be.mini == nil {
			return
		}
		// Time passes on miniredis only.
		be.mini.FastForward(retention + time.Second)
		if n := client.Exists(ctx, logKey, seqKey).Val(); n != 1 {
			t.Fatalf("%d of log and counter left after the retention, want the counter only", n)
		}
		wantRecords(t, "old cursor, log expired", mustRead(t, b, topic, h+1, 100), 0, nil, true)
		wantRecords(t, "cursor at head, log expired", mustRead(t, b, topic, last, 100), 0, nil, false)
		next := mustPublish(t, b, topic, []byte("again"))
		if next != last+1 {
			t.Errorf("Publish after the log expired returned %d, want %d", next, last+1)
		}
		wantRecords(t, "old cursor, log recreated", mustRead(t, b, topic, h+1, 100), last+1, [][]byte{[]byte("again")}, true)
		wantRecords(t, "head cursor, log recreated", mustRead(t, b, topic, last, 100), last+1, [][]byte{[]byte("again")}, false)

		// Once the counter is gone too, the topic is unknown: any cursor is
		// a Gap, and the new sequence starts from the clock, far above.
		be.mini.FastForward(25 * time.Hour)
		if n := client.Exists(ctx, logKey, seqKey).Val(); n != 0 {
			t.Fatalf("%d keys left after the counter's TTL, want 0", n)
		}
		wantRecords(t, "cursor of a forgotten topic", mustRead(t, b, topic, next, 100), 0, nil, true)
		if nh := mustHead(t, b, topic); nh <= next {
			t.Errorf("Head of the recreated topic = %d, not above the old head %d", nh, next)
		}
	})
}

// tens returns n records of 10 bytes, "<prefix><i>" padded with dots.
func tens(prefix string, first, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("%s%d..........", prefix, first+i)[:10])
	}
	return out
}

// A budgeted topic's size key holds "<bytes> <seq>": the bytes of its log,
// as of the publish that made seq, with the log's TTL. It stays right when
// it is lost, when an instance without the budget (an older version, or
// another configuration) publishes to the log, when it holds garbage, across
// Delete and when the log expires; each time the log is cut back to exactly
// the budget.
func TestRedisBrokerByteBudgetSizeKey(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		client := be.client(t)
		prefix := randomPrefix()
		const retention = 2 * time.Hour
		budget := topics.ByteBudget{Prefix: "m:", MaxBytes: 100}
		b := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix, Retention: retention, ByteBudgets: []topics.ByteBudget{budget}})
		plain := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix, Retention: retention})
		ctx := t.Context()
		const topic = "m:sized"
		seqKey, logKey, sizeKey := prefix+"{"+topic+"}:seq", prefix+"{"+topic+"}:log", prefix+"{"+topic+"}:size"
		// checkLog asserts that the log holds exactly the records want, the
		// newest ending at last, and that the size key says so.
		checkLog := func(what string, last uint64, want [][]byte) {
			t.Helper()
			entries, err := client.XRange(ctx, logKey, "-", "+").Result()
			if err != nil {
				t.Fatalf("%s: XRANGE: %v", what, err)
			}
			got := make([][]byte, len(entries))
			total := 0
			for i, e := range entries {
				d, _ := e.Values["d"].(string)
				got[i] = []byte(d)
				total += len(d)
			}
			if !slices.EqualFunc(got, want, bytes.Equal) {
				t.Errorf("%s: the log holds %q, want %q", what, got, want)
			}
			if size, err := client.Get(ctx, sizeKey).Result(); err != nil || size != fmt.Sprintf("%d %d", total, last) {
				t.Errorf("%s: size key = %q (%v), want %q", what, size, err, fmt.Sprintf("%d %d", total, last))
			}
			if ttl, logTTL := client.PTTL(ctx, sizeKey).Val(), client.PTTL(ctx, logKey).Val(); ttl < retention-time.Minute || ttl > retention || logTTL < retention-time.Minute {
				t.Errorf("%s: size key TTL %v, log TTL %v; want both %v", what, ttl, logTTL, retention)
			}
		}

		all := tens("a", 0, 12)
		last := mustPublish(t, b, topic, all...)
		checkLog("12 records of 10 bytes", last, all[2:])
		if n := client.Exists(ctx, prefix+"{t:plain}:size").Val(); n != 0 {
			t.Errorf("a topic without a budget has a size key")
		}

		// Lost (evicted): counted again.
		if err := client.Del(ctx, sizeKey).Err(); err != nil {
			t.Fatal(err)
		}
		more := tens("b", 0, 1)
		last = mustPublish(t, b, topic, more...)
		all = append(all, more...)
		checkLog("after the size key was lost", last, all[len(all)-10:])

		// Stale: an instance without the budget appended 5 records.
		more = tens("c", 0, 5)
		mustPublish(t, plain, topic, more...)
		all = append(all, more...)
		more = tens("d", 0, 1)
		last = mustPublish(t, b, topic, more...)
		all = append(all, more...)
		checkLog("after an instance without the budget published", last, all[len(all)-10:])

		// Garbage.
		if err := client.Set(ctx, sizeKey, "not a size", 0).Err(); err != nil {
			t.Fatal(err)
		}
		more = tens("e", 0, 2)
		last = mustPublish(t, b, topic, more...)
		all = append(all, more...)
		checkLog("after the size key held garbage", last, all[len(all)-10:])

		// Delete removes the size key with the log; the budget starts anew.
		mustDelete(t, b, topic)
		if n := client.Exists(ctx, logKey, sizeKey).Val(); n != 0 {
			t.Errorf("%d of the log and size key left after Delete, want none", n)
		}
		all = tens("f", 0, 10)
		for _, d := range all {
			last = mustPublish(t, b, topic, d)
		}
		checkLog("a budget's worth after Delete", last, all)

		if be.mini == nil {
			return
		}
		// Time passes on miniredis only: the size key expires with the log.
		be.mini.FastForward(retention + time.Second)
		if n := client.Exists(ctx, logKey, sizeKey, seqKey).Val(); n != 1 {
			t.Fatalf("%d of log, size key and counter left after the retention, want the counter only", n)
		}
		all = tens("g", 0, 10)
		last = mustPublish(t, b, topic, all...)
		checkLog("a budget's worth after the log expired", last, all)
	})
}

// A counter that vanished while its log stayed (evicted under memory
// pressure) restarts at the log's newest record, not below it: XADD could
// not append below it, and old Seqs would be reused.
func TestRedisBrokerCounterLost(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		client := be.client(t)
		prefix := randomPrefix()
		b := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix})
		ctx := t.Context()
		for _, op := range []string{"Publish", "Head"} {
			topic := "t:lost:" + op
			seqKey := prefix + "{" + topic + "}:seq"
			// A log ahead of the clock, as after a burst.
			future := uint64(time.Now().Add(time.Hour).UnixMicro())
			if err := client.Set(ctx, seqKey, future, 0).Err(); err != nil {
				t.Fatal(err)
			}
			last := mustPublish(t, b, topic, numbered(1, 3)...)
			if err := client.Del(ctx, seqKey).Err(); err != nil {
				t.Fatal(err)
			}
			if op == "Head" {
				if h := mustHead(t, b, topic); h != last {
					t.Errorf("Head after the counter was lost = %d, want the log's newest %d", h, last)
				}
			}
			if got := mustPublish(t, b, topic, []byte("next")); got != last+1 {
				t.Errorf("%s then Publish after the counter was lost = %d, want %d", op, got, last+1)
			}
			wantRecords(t, op, mustRead(t, b, topic, last-3, 100), last-2, append(numbered(1, 3), []byte("next")), false)
		}
	})
}

// After the Redis server restarts, Run subscribes again by itself and wakes
// every listener, since wake-ups published meanwhile were lost.
func TestRedisBrokerResubscribesAfterRestart(t *testing.T) {
	noLeaks(t)
	t.Run("miniredis", func(t *testing.T) {
		m := miniredis.RunT(t)
		be := &backend{mini: m, opts: func() *redis.Options { return &redis.Options{Addr: m.Addr()} }}
		testRestart(t, be, func() {
			m.Close()
			time.Sleep(50 * time.Millisecond) // let the receiver see the failure
			if err := m.Restart(); err != nil {
				t.Fatal(err)
			}
		})
	})
	t.Run("redis-server", func(t *testing.T) {
		srv := startRedisServer(t)
		be := &backend{opts: func() *redis.Options { return &redis.Options{Addr: srv.addr} }}
		testRestart(t, be, func() {
			srv.stop(t)
			time.Sleep(50 * time.Millisecond)
			srv.start(t)
		})
	})
}

func testRestart(t *testing.T, be *backend, restart func()) {
	prefix := randomPrefix()
	pub := newRedisBroker(t, be.client(t), topics.RedisOptions{Prefix: prefix})
	sub := newRedisBroker(t, be.client(t), topics.RedisOptions{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	const topic = "t:restart"
	startRun(t, sub)
	ctx := t.Context()
	// Wait until pub/sub works, by publishing until sub hears it, so that
	// the wake-up after the restart below can only come from the resubscribe.
	ready := sub.Listen("t:ready")
	defer ready.Close()
	for deadline := time.Now().Add(10 * time.Second); ; {
		mustPublish(t, pub, "t:ready", []byte("?"))
		if waitUpTo(ready, 50*time.Millisecond) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("sub never heard pub's publishes")
		}
	}
	l := sub.Listen(topic)
	defer l.Close()
	h := mustHead(t, sub, topic)
	mustPublish(t, pub, topic, []byte("before"))
	waitFor(t, l, "publish before the restart")

	restart()
	// Nobody publishes: only the resubscribe can wake l.
	waitFor(t, l, "resubscribed after the restart")

	// The subscription works again.
	drainListener(l)
	deadline := time.Now().Add(10 * time.Second)
	var last uint64
	for {
		var err error
		if last, err = pub.Publish(ctx, topic, []byte("after")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Publish after the restart: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(t, l, "publish after the restart")
	batch := mustRead(t, sub, topic, last-1, 100)
	wantRecords(t, "read after the restart", batch, last, [][]byte{[]byte("after")}, false)
	if be.mini == nil {
		// A real server without persistence forgot everything: the old
		// cursor reads as a Gap, as the new log numbers from the clock.
		if b := mustRead(t, sub, topic, h, 100); !b.Gap || last <= h+1 {
			t.Errorf("old cursor %d after a restart that lost the data: Gap %v, new Seq %d", h, b.Gap, last)
		}
	}
}

type redisServer struct {
	addr string
	dir  string
	cmd  *exec.Cmd
}

// startRedisServer starts a redis-server of our own on a spare port, or skips
// the test if there is none on PATH.
func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server is not on PATH")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	s := &redisServer{addr: addr, dir: t.TempDir()}
	s.start(t)
	t.Cleanup(func() { s.stop(t) })
	return s
}

func (s *redisServer) start(t *testing.T) {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	s.cmd = exec.Command("redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir, "--logfile", s.dir+"/redis.log")
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			_, _ = c.Write([]byte("PING\r\n"))
			buf := make([]byte, 7)
			_ = c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := io.ReadFull(c, buf)
			_ = c.Close()
			if string(buf[:n]) == "+PONG\r\n" {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.stop(t)
	t.Fatalf("redis-server on %s did not answer", s.addr)
}

func (s *redisServer) stop(t *testing.T) {
	t.Helper()
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// go-redis retries a command whose reply was lost (up to MaxRetries), even
// though Redis may have run it. Publish must not: its records would be
// appended twice and delivered twice.
func TestRedisBrokerPublishNotRetried(t *testing.T) {
	noLeaks(t)
	forEachBackend(t, func(t *testing.T, be *backend) {
		if be.cluster != nil {
			t.Skip("the reply-dropping proxy stands in front of a single server")
		}
		p := newReplyDropper(t, be.opts().Addr)
		proxied := be.clientWith(t, func(o *redis.Options) { o.Addr = p.addr; o.MaxRetries = 3 })
		direct := be.client(t)
		prefix := randomPrefix()
		b := newRedisBroker(t, proxied, topics.RedisOptions{Prefix: prefix})
		check := newRedisBroker(t, direct, topics.RedisOptions{Prefix: prefix})
		ctx := t.Context()
		const topic = "t:once"
		h := mustHead(t, b, topic)
		mustPublish(t, b, topic, []byte("warm")) // loads the script

		// What go-redis does with a plain command whose reply is lost.
		key := prefix + "incr"
		p.dropNextReply()
		if err := proxied.Incr(ctx, key).Err(); err != nil {
			t.Logf("INCR with its reply lost: %v", err)
		}
		n, _ := direct.Get(ctx, key).Int()
		t.Logf("an INCR whose reply was lost ran %d time(s): go-redis retries what may have run", n)

		p.dropNextReply()
		if _, err := b.Publish(ctx, topic, []byte("once")); err == nil {
			t.Errorf("Publish with its reply lost returned no error")
		}
		wantRecords(t, "log after a Publish whose reply was lost", mustRead(t, check, topic, h, 100), h+1,
			[][]byte{[]byte("warm"), []byte("once")}, false)
		// The broker goes on working on a new connection.
		mustPublish(t, b, topic, []byte("next"))
		wantRecords(t, "log after the next Publish", mustRead(t, check, topic, h, 100), h+1,
			[][]byte{[]byte("warm"), []byte("once"), []byte("next")}, false)
	})
}

// replyDropper is a TCP proxy to a Redis server that can close a connection
// instead of forwarding a reply: the command ran, the client never hears it.
type replyDropper struct {
	addr string
	ln   net.Listener
	drop atomic.Bool
	wg   sync.WaitGroup
	mu   sync.Mutex
	open []net.Conn
}

func newReplyDropper(t *testing.T, upstream string) *replyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &replyDropper{addr: ln.Addr().String(), ln: ln}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.open = append(p.open, c, u)
			p.mu.Unlock()
			p.wg.Go(func() { _, _ = io.Copy(u, c); _ = u.Close() })
			p.wg.Go(func() {
				defer c.Close()
				defer u.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := u.Read(buf)
					if n > 0 && p.drop.CompareAndSwap(true, false) {
						return
					}
					if n > 0 {
						if _, err := c.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.open {
			_ = c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *replyDropper) dropNextReply() { p.drop.Store(true) }

// Run returns nil when its context ends, refuses to run twice at once, and
// leaves no goroutine behind, even while Redis is unreachable.
func TestRedisBrokerRunLifecycle(t *testing.T) {
	noLeaks(t)
	m := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer client.Close()
	b := topics.NewRedisBroker(client, topics.RedisOptions{Prefix: randomPrefix(), Logger: slog.New(slog.DiscardHandler)})
	l := b.Listen("t:x")
	defer l.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	waitFor(t, l, "subscribed")
	if err := b.Run(ctx); err == nil {
		t.Errorf("a second Run while the first runs returned nil, want an error")
	}
	m.Close() // unreachable: Run keeps retrying, with a backoff
	time.Sleep(300 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	// A stopped broker can run again.
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithCancel(t.Context())
	go func() { done <- b.Run(ctx2) }()
	waitFor(t, l, "subscribed again")
	cancel2()
	if err := <-done; err != nil {
		t.Errorf("second Run = %v, want nil", err)
	}
}

// Errors say which operation and topic failed.
func TestRedisBrokerErrors(t *testing.T) {
	m := miniredis.RunT(t)
	client := redis.NewClient(&redis.Options{Addr: m.Addr(), MaxRetries: -1, DialerRetries: 1})
	defer client.Close()
	b := topics.NewRedisBroker(client, topics.RedisOptions{})
	m.Close()
	ctx := t.Context()
	_, err := b.Publish(ctx, "t:down", []byte("x"))
	checkErr(t, err, "publish t:down")
	_, err = b.Read(ctx, "t:down", 0, 1)
	checkErr(t, err, "read t:down")
	_, err = b.ReadMany(ctx, []topics.ReadRequest{{Topic: "t:down"}})
	checkErr(t, err, "read t:down")
	_, err = b.Head(ctx, "t:down")
	checkErr(t, err, "head t:down")
	checkErr(t, b.Delete(ctx, "t:down"), "delete t:down")
}

func checkErr(t *testing.T, err error, prefix string) {
	t.Helper()
	if err == nil || !strings.HasPrefix(err.Error(), prefix+": ") {
		t.Errorf("error = %v, want one starting %q", err, prefix+": ")
	}
	var ne net.Error
	if err != nil && !errors.As(err, &ne) {
		t.Errorf("error %v does not wrap the network error", err)
	}
}

// --- benchmarks ---

// benchBackend returns a client of the Redis at SLUICE_TEST_REDIS, or of a miniredis.
func benchBackend(b *testing.B, c *redistest.Counter) redis.UniversalClient {
	b.Helper()
	var o *redis.Options
	if url := os.Getenv("SLUICE_TEST_REDIS"); url != "" {
		var err error
		if o, err = redis.ParseURL(url); err != nil {
			b.Fatal(err)
		}
	} else {
		o = &redis.Options{Addr: miniredis.RunT(b).Addr()}
	}
	client := redis.NewClient(o)
	client.AddHook(c)
	b.Cleanup(func() { _ = client.Close() })
	return client
}

func BenchmarkRedisPublish(b *testing.B) {
	for _, n := range []int{1, 10} {
		b.Run(fmt.Sprintf("records=%d", n), func(b *testing.B) {
			var c redistest.Counter
			br := newRedisBroker(b, benchBackend(b, &c), topics.RedisOptions{})
			data := make([][]byte, n)
			for i := range data {
				data[i] = make([]byte, 200)
			}
			ctx := b.Context()
			if _, err := br.Publish(ctx, "t:bench", data...); err != nil {
				b.Fatal(err)
			}
			c0 := c.Cmds.Load()
			for b.Loop() {
				if _, err := br.Publish(ctx, "t:bench", data...); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(c.Cmds.Load()-c0)/float64(b.N), "redis-cmds/op")
		})
	}
}

func BenchmarkRedisRead(b *testing.B) {
	var c redistest.Counter
	br := newRedisBroker(b, benchBackend(b, &c), topics.RedisOptions{})
	ctx := b.Context()
	data := make([][]byte, 100)
	for i := range data {
		data[i] = make([]byte, 200)
	}
	h, err := br.Head(ctx, "t:bench")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := br.Publish(ctx, "t:bench", data...); err != nil {
		b.Fatal(err)
	}
	if _, err := br.Read(ctx, "t:bench", h, 100); err != nil {
		b.Fatal(err)
	}
	c0 := c.Cmds.Load()
	for b.Loop() {
		if _, err := br.Read(ctx, "t:bench", h+90, 100); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(c.Cmds.Load()-c0)/float64(b.N), "redis-cmds/op")
}

// One broadcast read by many local subscribers costs the instance one read
// of Redis: the readers woken by the publish are answered from the records
// the first of them fetched. A reader with nothing announced past its cursor
// still reads Redis, so a lost wake-up cannot hide a record.
func TestRedisBrokerSharedReads(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be *backend) {
		var c redistest.Counter
		prefix := randomPrefix()
		a := newRedisBroker(t, be.client(t, &c), topics.RedisOptions{Prefix: prefix})
		pub := newRedisBroker(t, be.client(t), topics.RedisOptions{Prefix: prefix})
		startRunReady(t, a)
		ctx := t.Context()
		const topic = "t:shared"
		h, err := a.Head(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		const readers = 50
		ls := make([]*topics.Listener, readers)
		for i := range ls {
			ls[i] = a.Listen(topic)
			defer ls[i].Close()
		}
		last, err := pub.Publish(ctx, topic, []byte("uno"), []byte("dos"))
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range ls {
			waitFor(t, l, fmt.Sprintf("reader %d, after a publish on another instance", i))
		}
		read := func(i int) {
			got, err := a.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: h}})
			if err != nil {
				t.Fatal(err)
			}
			if len(got[0].Records) != 2 || string(got[0].Records[1].Data) != "dos" || got[0].Head != last || got[0].Gap {
				t.Fatalf("reader %d: %+v, want records uno, dos up to %d", i, got[0], last)
			}
		}
		read(0) // reads Redis (and may dial a connection: not counted)
		calls, _ := c.Measure(func() {
			for i := 1; i < readers; i++ {
				read(i)
			}
		})
		if calls != 0 {
			t.Errorf("%d more readers of one broadcast: %d Redis round trips, want 0", readers-1, calls)
		}
		// A reader from the middle is served too, with only what it lacks.
		calls, _ = c.Measure(func() {
			got, err := a.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: h + 1}})
			if err != nil || len(got[0].Records) != 1 || string(got[0].Records[0].Data) != "dos" {
				t.Fatalf("reader after the first record: %+v, %v", got, err)
			}
		})
		if calls != 0 {
			t.Errorf("reader after the first record: %d round trips, want 0", calls)
		}
		// Up to date as far as this instance heard: Redis is asked (a
		// wake-up may have been lost).
		calls, _ = c.Measure(func() {
			if _, err := a.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: last}}); err != nil {
				t.Fatal(err)
			}
		})
		if calls != 1 {
			t.Errorf("reader at the announced head: %d round trips, want 1", calls)
		}
		// Many readers at once all get the records.
		last2, err := pub.Publish(ctx, topic, []byte("tres"))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls {
			waitFor(t, l, "a reader, after the second publish")
		}
		var wg sync.WaitGroup
		errs := make(chan error, readers)
		for range readers {
			wg.Go(func() {
				got, err := a.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: last}})
				switch {
				case err != nil:
					errs <- err
				case len(got[0].Records) != 1 || got[0].Records[0].Seq != last2 || string(got[0].Records[0].Data) != "tres":
					errs <- fmt.Errorf("concurrent reader got %+v", got[0])
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}

// A record whose wake-up never reached this instance (published while its
// pub/sub connection was down) is delivered once the subscription is back:
// the broker wakes every listener, and their reads, Recent ones included,
// go to Redis rather than being told from memory that nothing is new.
func TestRedisBrokerRecentReadAfterResubscribe(t *testing.T) {
	noLeaks(t)
	srv := startRedisServer(t)
	be := &backend{opts: func() *redis.Options { return &redis.Options{Addr: srv.addr} }}
	prefix := randomPrefix()
	client := be.client(t)
	sub := newRedisBroker(t, client, topics.RedisOptions{Prefix: prefix, Logger: slog.New(slog.DiscardHandler)})
	pub := newRedisBroker(t, be.client(t), topics.RedisOptions{Prefix: prefix})
	startRunReady(t, sub)
	const topic = "t:lost"
	l := sub.Listen(topic)
	defer l.Close()
	ctx := t.Context()
	first := mustPublish(t, pub, topic, []byte("heard"))
	waitFor(t, l, "the first publish")
	got, err := sub.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: first - 1, Recent: true}})
	if err != nil || len(got[0].Records) != 1 {
		t.Fatalf("read of the heard record: %+v, %v", got, err)
	}

	// A record appended with no wake-up, as one whose PUBLISH was lost.
	keys := []string{prefix + "{" + topic + "}:seq", prefix + "{" + topic + "}:log"}
	lost, err := client.Incr(ctx, keys[0]).Uint64()
	if err != nil {
		t.Fatal(err)
	}
	if err := client.XAdd(ctx, &redis.XAddArgs{Stream: keys[1], ID: strconv.FormatUint(lost, 10) + "-0", Values: []string{"d", "lost"}}).Err(); err != nil {
		t.Fatal(err)
	}
	// The wake-up subscription breaks; Run subscribes again and wakes l.
	if err := client.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, l, "the wake-up after resubscribing")
	got, err = sub.ReadMany(ctx, []topics.ReadRequest{{Topic: topic, After: first, Recent: true}})
	if err != nil {
		t.Fatal(err)
	}
	wantRecords(t, "a woken Recent read after resubscribing", got[0], lost, [][]byte{[]byte("lost")}, false)
}
