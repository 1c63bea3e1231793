package gateway_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/gateway"
	"github.com/sluicegw/sluice/gateway/storetest"
	"github.com/sluicegw/sluice/internal/redistest"
	"github.com/sluicegw/sluice/topics"
)

var _ storetest.Store = (*gateway.RedisStore)(nil)

// redisBackend is a Redis to test against: connect returns a new client to it
// (so that two clients act as two instances).
type redisBackend struct {
	name    string
	connect func(t *testing.T) redis.UniversalClient
}

// redisBackends returns miniredis always, the Redis at SLUICE_TEST_REDIS if set, and the
// Redis Cluster at $SLUICE_TEST_REDIS_CLUSTER (see redistest.ClusterEnv), whose
// subtests skip when that is not set.
func redisBackends(t *testing.T) []redisBackend {
	t.Helper()
	mr := miniredis.RunT(t)
	bs := []redisBackend{{"miniredis", func(t *testing.T) redis.UniversalClient {
		return redisCloseLater(t, redis.NewClient(&redis.Options{Addr: mr.Addr()}))
	}}}
	if u := os.Getenv("SLUICE_TEST_REDIS"); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			t.Fatalf("SLUICE_TEST_REDIS: %v", err)
		}
		bs = append(bs, redisBackend{"redis", func(t *testing.T) redis.UniversalClient {
			return redisCloseLater(t, redis.NewClient(opts))
		}})
	}
	bs = append(bs, redisBackend{"cluster", func(t *testing.T) redis.UniversalClient {
		return redisCloseLater(t, redis.NewClusterClient(redistest.ClusterOptionsFromEnv(t)))
	}})
	return bs
}

func redisCloseLater(t *testing.T, c redis.UniversalClient) redis.UniversalClient {
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// testPrefix returns a fresh key prefix and deletes its keys when t ends.
func redisTestPrefix(t *testing.T, c redis.UniversalClient) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "sluicetest:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		ctx := context.Background() // t.Context() is done by now
		for _, k := range redisKeys(t, ctx, c, prefix) {
			if err := c.Del(ctx, k).Err(); err != nil { // one by one: keys of many slots
				t.Errorf("cleanup: DEL %q: %v", k, err)
			}
		}
	})
	return prefix
}

// keysWithPrefix SCANs every master for the keys under prefix (hex and ':'
// only, so no glob escaping is needed).
func redisKeys(t *testing.T, ctx context.Context, c redis.UniversalClient, prefix string) []string {
	t.Helper()
	var mu sync.Mutex
	var keys []string
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			keys = append(keys, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := c.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return scan(ctx, c) })
	} else {
		err = scan(ctx, c)
	}
	if err != nil {
		t.Fatalf("SCAN %s*: %v", prefix, err)
	}
	slices.Sort(keys)
	return keys
}

func newTestRedisStore(t *testing.T, c redis.UniversalClient, prefix string) *gateway.RedisStore {
	return gateway.NewRedisStore(c, gateway.RedisOptions{Prefix: prefix, Logger: redisTestLogger(t)})
}

// countedEchoGateway is a gateway on c under prefix (its store, which it
// returns, as sessions and presence, and a Redis broker) whose client
// counts round trips from now on; "room:*" is an echoRoom and a connect's
// token is its user id. cfg gives the rest (timeouts, limits).
func countedEchoGateway(t *testing.T, c redis.UniversalClient, prefix string, cfg gateway.Config) (*gateway.Gateway, *gateway.RedisStore, *redistest.Counter) {
	t.Helper()
	return countedEchoGatewayWith(t, c, prefix, cfg, nil)
}

// countedEchoGatewayWith is countedEchoGateway whose store setup changes
// (if not nil) before the gateway is made.
func countedEchoGatewayWith(t *testing.T, c redis.UniversalClient, prefix string, cfg gateway.Config, setup func(*gateway.RedisStore)) (*gateway.Gateway, *gateway.RedisStore, *redistest.Counter) {
	t.Helper()
	counter := &redistest.Counter{}
	c.AddHook(counter)
	store := newTestRedisStore(t, c, prefix)
	if setup != nil {
		setup(store)
	}
	router := &topics.Router[gateway.Handler]{}
	router.Add("room:*", echoRoom{})
	cfg.Router = router
	cfg.Sessions, cfg.Presence = store, store
	cfg.Broker = topics.NewRedisBroker(c, topics.RedisOptions{Prefix: prefix, Logger: redisTestLogger(t)})
	cfg.Authenticate = func(_ context.Context, info gateway.ConnectInfo) (gateway.Identity, error) {
		return gateway.Identity{UserID: json.RawMessage(info.Token)}, nil
	}
	cfg.Logger = redisTestLogger(t)
	gw, err := gateway.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return gw, store, counter
}

// TestRedisStoreConformance runs the store conformance suite on every
// redisBackend, each subtest under its own prefix.
func TestRedisStoreConformance(t *testing.T) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			c := b.connect(t)
			storetest.Run(t, func(t *testing.T) storetest.Store {
				return newTestRedisStore(t, c, redisTestPrefix(t, c))
			})
		})
	}
}

// forEachRedis runs fn on every redisBackend with a fresh prefix.
func forEachRedis(t *testing.T, fn func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string)) {
	for _, b := range redisBackends(t) {
		t.Run(b.name, func(t *testing.T) {
			c := b.connect(t)
			fn(t, b, c, redisTestPrefix(t, c))
		})
	}
}

func redisTestID(n int) string { return fmt.Sprintf("5e55%028x", n) }

func redisTestSession(id, uid string) *gateway.Session {
	return &gateway.Session{ID: id, UserID: json.RawMessage(uid), Vsn: "2.0.0", CreatedAt: time.Now().UTC()}
}

// Two instances (two clients, two stores, one prefix) see the same sessions
// and presences.
func TestRedisStoreTwoInstances(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		a := newTestRedisStore(t, c, prefix)
		other := newTestRedisStore(t, b.connect(t), prefix)
		d := time.Now().Add(time.Hour)

		s := redisTestSession(redisTestID(1), `"ana"`)
		if err := a.Create(ctx, s, d, 0); err != nil {
			t.Fatalf("Create on A: %v", err)
		}
		got, err := other.Load(ctx, s.ID)
		if err != nil || got.ID != s.ID || string(got.UserID) != `"ana"` {
			t.Fatalf("Load on B = %+v, %v", got, err)
		}
		got.Name = "saved by B"
		if err := other.Save(ctx, got); err != nil {
			t.Fatalf("Save on B: %v", err)
		}
		if got, err := a.Load(ctx, s.ID); err != nil || got.Name != "saved by B" {
			t.Fatalf("Load on A after B's Save = %+v, %v", got, err)
		}
		if _, err := other.Touch(ctx, s.ID, d.Add(time.Hour)); err != nil {
			t.Fatalf("Touch on B: %v", err)
		}
		if ids, err := other.BySocket(ctx, "user_socket:ana"); err != nil || !slices.Equal(ids, []string{s.ID}) {
			t.Fatalf("BySocket on B = %v, %v", ids, err)
		}
		if got, err := a.Claim(ctx, d.Add(time.Minute), time.Hour, 10); err != nil || len(got) != 0 {
			t.Fatalf("Claim on A between the old and B's new deadline = %d sessions, %v; want none", len(got), err)
		}
		claimed, err := other.Claim(ctx, d.Add(2*time.Hour), time.Hour, 10)
		if err != nil || len(claimed) != 1 || claimed[0].Name != "saved by B" {
			t.Fatalf("Claim on B = %v, %v; want the session", claimed, err)
		}
		if got, err := a.Claim(ctx, d.Add(2*time.Hour), time.Hour, 10); err != nil || len(got) != 0 {
			t.Fatalf("Claim on A within B's lease = %d sessions, %v; want none", len(got), err)
		}
		if _, err := a.Remove(ctx, s.ID); err != nil {
			t.Fatalf("Remove on A: %v", err)
		}
		if _, err := other.Remove(ctx, s.ID); !errors.Is(err, gateway.ErrNoSession) {
			t.Fatalf("Remove on B after A's = %v, want ErrNoSession", err)
		}

		e := gateway.PresenceEntry{Key: "ana", Owner: s.ID + "/0", Meta: json.RawMessage(`{"phx_ref":"1"}`), At: 1795700000000000001}
		if _, err := a.PutPresence(ctx, "sala:lobby", e); err != nil {
			t.Fatalf("PutPresence on A: %v", err)
		}
		if es, err := other.ListPresence(ctx, "sala:lobby"); err != nil || len(es) != 1 || es[0].At != e.At {
			t.Fatalf("ListPresence on B = %+v, %v", es, err)
		}
		e2 := e
		e2.Meta, e2.At = json.RawMessage(`{"phx_ref":"2"}`), e.At+5
		prev, err := other.PutPresence(ctx, "sala:lobby", e2)
		if err != nil || prev == nil || prev.At != e.At || string(prev.Meta) != `{"phx_ref":"1"}` {
			t.Fatalf("PutPresence on B = %+v, %v; want A's entry as prev", prev, err)
		}
		left, err := other.RemovePresence(ctx, "sala:lobby", e.Owner)
		if err != nil || len(left) != 1 || left[0].At != e.At || string(left[0].Meta) != `{"phx_ref":"2"}` {
			t.Fatalf("RemovePresence on B = %+v, %v", left, err)
		}
		if es, err := a.ListPresence(ctx, "sala:lobby"); err != nil || len(es) != 0 {
			t.Fatalf("ListPresence on A after B's remove = %+v, %v", es, err)
		}
	})
}

// A lock held through one instance excludes the other; unlock is safe to
// call twice and never frees a lock another holder took after it expired.
func TestRedisStoreLockAcrossInstances(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		a := newTestRedisStore(t, c, prefix)
		other := newTestRedisStore(t, b.connect(t), prefix)
		id := redisTestID(1)
		lock := func(st *gateway.RedisStore, wait time.Duration) (func(), error) {
			ctx, cancel := context.WithTimeout(t.Context(), wait)
			defer cancel()
			return st.Lock(ctx, id)
		}

		unlockA, err := lock(a, time.Second)
		if err != nil {
			t.Fatalf("Lock on A: %v", err)
		}
		if u, err := lock(other, 50*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			if u != nil {
				u()
			}
			t.Fatalf("Lock on B while A holds it = %v, want DeadlineExceeded", err)
		}
		unlockA()
		unlockB, err := lock(other, 5*time.Second)
		if err != nil {
			t.Fatalf("Lock on B after A's unlock: %v", err)
		}
		unlockA() // a second unlock must not free B's lock
		if u, err := lock(a, 50*time.Millisecond); err == nil {
			u()
			t.Fatal("a second unlock by A freed B's lock")
		}
		// B's lock expires (simulated: its key goes), A takes it, and B's
		// late unlock must leave A's lock alone.
		lockKeys := 0
		for _, k := range redisKeys(t, context.Background(), c, prefix) {
			if strings.HasSuffix(k, ":lock") {
				lockKeys++
				if err := c.Del(t.Context(), k).Err(); err != nil {
					t.Fatal(err)
				}
			}
		}
		if lockKeys != 1 {
			t.Fatalf("found %d lock keys, want 1", lockKeys)
		}
		unlockA, err = lock(a, time.Second)
		if err != nil {
			t.Fatalf("Lock on A after B's lock expired: %v", err)
		}
		unlockB()
		if u, err := lock(other, 50*time.Millisecond); err == nil {
			u()
			t.Fatal("B's late unlock freed A's lock")
		}
		unlockA()
		lock2, err := lock(other, time.Second)
		if err != nil {
			t.Fatalf("Lock after every unlock: %v", err)
		}
		lock2()
	})
}

// hashTag returns the part of key that Redis Cluster hashes.
func redisHashTag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// Topics with braces, escapes and non-ASCII text stay isolated, and each
// topic's keys share one hash tag (one Cluster slot).
func TestRedisStoreOddTopics(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		st := newTestRedisStore(t, c, prefix)
		topics := []string{"sala:{a}", "sala:}{", "sala:{", "sala:%7B", "sala:}", "sala:ñandú 🌵", "sala:a}:o", "sala:a"}
		for i, topic := range topics {
			for j := range 2 {
				e := gateway.PresenceEntry{Key: fmt.Sprint(j), Owner: fmt.Sprintf("s%d/0", i), Meta: json.RawMessage(`{"t":` + fmt.Sprint(i) + `}`), At: int64(j)}
				if _, err := st.PutPresence(ctx, topic, e); err != nil {
					t.Fatalf("PutPresence(%q): %v", topic, err)
				}
			}
		}
		for i, topic := range topics {
			es, err := st.ListPresence(ctx, topic)
			if err != nil || len(es) != 2 || es[0].Owner != fmt.Sprintf("s%d/0", i) || es[1].Owner != es[0].Owner {
				t.Errorf("ListPresence(%q) = %+v, %v; want its own 2 entries", topic, es, err)
			}
		}
		tags := map[string][]string{}
		for _, k := range redisKeys(t, ctx, c, prefix) {
			tags[redisHashTag(k)] = append(tags[redisHashTag(k)], k)
		}
		if len(tags) != len(topics) {
			t.Errorf("%d hash tags for %d topics: %q", len(tags), len(topics), tags)
		}
		for tag, keys := range tags {
			if len(keys) != 2 {
				t.Errorf("hash tag %q has keys %q, want a topic's 2", tag, keys)
			}
		}
		for i, topic := range topics {
			left, err := st.RemovePresence(ctx, topic, fmt.Sprintf("s%d/0", i))
			if err != nil || len(left) != 2 {
				t.Errorf("RemovePresence(%q) = %+v, %v; want 2 entries", topic, left, err)
			}
		}
		if keys := redisKeys(t, ctx, c, prefix); len(keys) != 0 {
			t.Errorf("keys left after removing every presence: %q", keys)
		}
	})
}

// expiryMembers returns the ids in the deadline index.
func redisExpiryMembers(t *testing.T, c redis.UniversalClient, prefix string) []string {
	t.Helper()
	ids, err := c.ZRange(t.Context(), prefix+"{expiry}", 0, -1).Result()
	if err != nil {
		t.Fatalf("ZRANGE expiry: %v", err)
	}
	return ids
}

// A Touch of a removed session, even one racing the Remove, never puts it
// back in the deadline index.
func TestRedisStoreTouchDoesNotReAdd(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		st := newTestRedisStore(t, c, prefix)
		d := time.Now().Add(time.Hour)
		if err := st.Create(ctx, redisTestSession(redisTestID(1), `1`), d, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Remove(ctx, redisTestID(1)); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Touch(ctx, redisTestID(1), d.Add(time.Hour)); !errors.Is(err, gateway.ErrNoSession) {
			t.Fatalf("Touch of a removed session = %v, want ErrNoSession", err)
		}
		if ids := redisExpiryMembers(t, c, prefix); len(ids) != 0 {
			t.Fatalf("deadline index after Touch of a removed session = %v, want empty", ids)
		}
		if got, err := st.Claim(ctx, d.Add(1000*time.Hour), time.Minute, 10); err != nil || len(got) != 0 {
			t.Fatalf("Claim far ahead = %d sessions, %v; want none", len(got), err)
		}

		// Racing: Touches keep coming while the sessions are removed.
		const n = 30
		for i := range n {
			if err := st.Create(ctx, redisTestSession(redisTestID(100+i), `2`), d, 0); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				for range 5 {
					_, err := st.Touch(context.Background(), redisTestID(100+i), d.Add(time.Hour))
					if err != nil && !errors.Is(err, gateway.ErrNoSession) {
						t.Errorf("Touch: %v", err)
					}
				}
			})
			wg.Go(func() {
				if _, err := st.Remove(context.Background(), redisTestID(100+i)); err != nil {
					t.Errorf("Remove: %v", err)
				}
			})
		}
		wg.Wait()
		if ids := redisExpiryMembers(t, c, prefix); len(ids) != 0 {
			t.Errorf("deadline index after racing Touches and Removes = %v, want empty", ids)
		}
		if keys := redisKeys(t, ctx, c, prefix); len(keys) != 0 {
			t.Errorf("keys left after every session was removed: %q", keys)
		}
	})
}

// Ids whose data is gone (ended by TTL, or a Remove whose cleanup failed)
// are dropped by Claim and BySocket; an undecodable session does not stop
// the expiry of the others.
func TestRedisStoreDropsLeftovers(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		st := newTestRedisStore(t, c, prefix)
		d := time.Now().Add(time.Hour)
		for i := range 3 {
			if err := st.Create(ctx, redisTestSession(redisTestID(i), `7`), d, 0); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.Del(ctx, prefix+"{s:"+redisTestID(0)+"}").Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, prefix+"{s:"+redisTestID(1)+"}", "not json", 0).Err(); err != nil {
			t.Fatal(err)
		}
		ids, err := st.BySocket(ctx, "user_socket:7")
		if err != nil || !slices.Equal(ids, []string{redisTestID(1), redisTestID(2)}) {
			t.Errorf("BySocket = %v, %v; want the 2 sessions with data", ids, err)
		}
		if n, err := c.SCard(ctx, prefix+"{sock:user_socket:7}").Result(); err != nil || n != 2 {
			t.Errorf("socket index has %d ids (%v), want the stale one dropped", n, err)
		}
		got, err := st.Claim(ctx, d.Add(time.Minute), time.Minute, 10)
		if err != nil || len(got) != 1 || got[0].ID != redisTestID(2) {
			t.Fatalf("Claim = %v, %v; want only the decodable session", got, err)
		}
		if ids := redisExpiryMembers(t, c, prefix); !slices.Equal(ids, []string{redisTestID(1), redisTestID(2)}) {
			t.Errorf("deadline index = %v, want the id without data dropped", ids)
		}
	})
}

// Every key but the (bounded) deadline index has a TTL.
func TestRedisStoreKeysHaveTTLs(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		st := newTestRedisStore(t, c, prefix)
		s := redisTestSession(redisTestID(1), `"ana"`)
		if err := st.Create(ctx, s, time.Now().Add(time.Minute), 0); err != nil {
			t.Fatal(err)
		}
		unlock, err := st.Lock(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		if _, err := st.PutPresence(ctx, "sala:lobby", gateway.PresenceEntry{Key: "ana", Owner: s.ID + "/0", Meta: json.RawMessage(`{}`), At: 1}); err != nil {
			t.Fatal(err)
		}
		keys := redisKeys(t, ctx, c, prefix)
		if len(keys) != 6 {
			t.Errorf("keys = %q, want 6 (session, lock, expiry, socket, presence hash and index)", keys)
		}
		for _, k := range keys {
			ttl, err := c.PTTL(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			if k == prefix+"{expiry}" {
				continue
			}
			if ttl <= 0 {
				t.Errorf("key %q has no TTL (%v)", k, ttl)
			}
		}
		// Touch refreshes the session's TTL past its deadline.
		if _, err := st.Touch(ctx, s.ID, time.Now().Add(48*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if ttl, err := c.PTTL(ctx, prefix+"{s:"+s.ID+"}").Result(); err != nil || ttl < 48*time.Hour {
			t.Errorf("session TTL after Touch to +48h = %v, %v; want more than 48h", ttl, err)
		}
	})
}

// Deadlines are kept to the millisecond, rounded so that a session is never
// claimed before its deadline.
func TestRedisStoreClaimNeverEarly(t *testing.T) {
	forEachRedis(t, func(t *testing.T, b redisBackend, c redis.UniversalClient, prefix string) {
		ctx := t.Context()
		st := newTestRedisStore(t, c, prefix)
		d := time.Now().Add(time.Hour).Truncate(time.Millisecond).Add(500 * time.Microsecond)
		if err := st.Create(ctx, redisTestSession(redisTestID(1), `1`), d, 0); err != nil {
			t.Fatal(err)
		}
		for _, early := range []time.Duration{time.Millisecond, 300 * time.Microsecond, time.Nanosecond} {
			if got, err := st.Claim(ctx, d.Add(-early), time.Minute, 10); err != nil || len(got) != 0 {
				t.Errorf("Claim %v before the deadline = %d sessions, %v; want none", early, len(got), err)
			}
		}
		if got, err := st.Claim(ctx, d.Add(time.Millisecond), time.Minute, 10); err != nil || len(got) != 1 {
			t.Errorf("Claim 1ms after the deadline = %d sessions, %v; want 1", len(got), err)
		}
	})
}

// redisTestLogger sends the store's logs to the test's output.
func redisTestLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}
