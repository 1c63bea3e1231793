package chat_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/sluicegw/sluice/cmd/sluice/chat"
	"github.com/sluicegw/sluice/internal/redistest"
)

// keepLast is the history bound of the stores under test.
const keepLast = 5

// TestStores runs the same checks on every Store: the memory store, Redis on
// miniredis, the Redis at SLUICE_TEST_REDIS if set, and the Redis Cluster at
// $SLUICE_TEST_REDIS_CLUSTER if set.
func TestStores(t *testing.T) {
	t.Run("memory", func(t *testing.T) { testStore(t, chat.NewMemoryStore(keepLast), time.Sleep) })
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		st, prefix := newRedisStore(t, c)
		testStore(t, st, mr.FastForward) // miniredis's TTLs move only when told
		requireAttemptKeysExpire(t, c, prefix)
	})
	t.Run("redis", func(t *testing.T) {
		u := os.Getenv("SLUICE_TEST_REDIS")
		if u == "" {
			t.Skip("SLUICE_TEST_REDIS not set")
		}
		opts, err := redis.ParseURL(u)
		if err != nil {
			t.Fatalf("SLUICE_TEST_REDIS: %v", err)
		}
		c := redis.NewClient(opts)
		st, prefix := newRedisStore(t, c)
		testStore(t, st, time.Sleep)
		requireAttemptKeysExpire(t, c, prefix)
	})
	t.Run("cluster", func(t *testing.T) {
		c := redis.NewClusterClient(redistest.ClusterOptionsFromEnv(t))
		st, prefix := newRedisStore(t, c)
		testStore(t, st, time.Sleep)
		requireAttemptKeysExpire(t, c, prefix)
	})
}

// forEachNode runs fn on c, or on each master of a Cluster, whose KEYS and
// SCAN see only their own keys. Sequential: fn may append to a slice.
func forEachNode(ctx context.Context, c redis.UniversalClient, fn func(context.Context, redis.Cmdable) error) error {
	cc, ok := c.(*redis.ClusterClient)
	if !ok {
		return fn(ctx, c)
	}
	var masters []*redis.Client
	var mu sync.Mutex
	if err := cc.ForEachMaster(ctx, func(_ context.Context, node *redis.Client) error {
		mu.Lock()
		masters = append(masters, node)
		mu.Unlock()
		return nil
	}); err != nil {
		return err
	}
	for _, node := range masters {
		if err := fn(ctx, node); err != nil {
			return err
		}
	}
	return nil
}

// requireAttemptKeysExpire checks that the join-attempt counters testStore
// left are under the store's prefix and expire.
func requireAttemptKeysExpire(t *testing.T, c redis.UniversalClient, prefix string) {
	t.Helper()
	ctx := context.Background()
	var keys []string
	err := forEachNode(ctx, c, func(ctx context.Context, node redis.Cmdable) error {
		found, err := node.Keys(ctx, prefix+"join-attempts:*").Result()
		keys = append(keys, found...)
		return err
	})
	if err != nil || len(keys) == 0 {
		t.Fatalf("join-attempt keys under %s: %v, %v; want some", prefix, keys, err)
	}
	for _, k := range keys {
		// -2: it expired meanwhile (the short window); -1: it never would.
		if ttl, err := c.PTTL(ctx, k).Result(); err != nil || ttl == -1 {
			t.Errorf("%s: TTL %v, %v; want one (the window)", k, ttl, err)
		}
	}
}

// newRedisStore returns a RedisStore under a fresh prefix, and the prefix,
// whose keys are deleted when t ends.
func newRedisStore(t *testing.T, c redis.UniversalClient) (*chat.RedisStore, string) {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "sluicetest:chat:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		defer c.Close()
		ctx := context.Background() // t.Context() is done by now
		clean := func(ctx context.Context, node redis.Cmdable) error {
			iter := node.Scan(ctx, 0, prefix+"*", 1000).Iterator()
			for iter.Next(ctx) {
				if err := node.Del(ctx, iter.Val()).Err(); err != nil {
					return err
				}
			}
			return iter.Err()
		}
		if err := forEachNode(ctx, c, clean); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return chat.NewRedisStore(c, prefix, keepLast), prefix
}

// testStore checks st; elapse lets time pass for its expiring keys.
func testStore(t *testing.T, st chat.Store, elapse func(time.Duration)) {
	ctx := t.Context()

	// Rooms: put, get, replace; a missing room is ErrNoRoom.
	if _, err := st.Room(ctx, "nope"); !errors.Is(err, chat.ErrNoRoom) {
		t.Errorf("Room of a missing room = %v, want ErrNoRoom", err)
	}
	want := chat.Room{ID: "dev", Password: "s3cr3t ñ", Members: []string{"1", "alice"}}
	if err := st.PutRoom(ctx, want); err != nil {
		t.Fatalf("PutRoom: %v", err)
	}
	got, err := st.Room(ctx, "dev")
	if err != nil || got.ID != want.ID || got.Password != want.Password || !slices.Equal(got.Members, want.Members) {
		t.Fatalf("Room = %+v, %v; want %+v", got, err, want)
	}
	got.Members[0] = "changed" // the caller's own copy
	if again, _ := st.Room(ctx, "dev"); again == nil || again.Members[0] != "1" {
		t.Errorf("changing a returned room changed the store: %+v", again)
	}
	if err := st.PutRoom(ctx, chat.Room{ID: "dev", Members: []string{"bob"}}); err != nil {
		t.Fatalf("PutRoom (replace): %v", err)
	}
	if got, err := st.Room(ctx, "dev"); err != nil || got.Password != "" || !slices.Equal(got.Members, []string{"bob"}) {
		t.Errorf("Room after a replace = %+v, %v", got, err)
	}
	if _, err := st.Room(ctx, "de"); !errors.Is(err, chat.ErrNoRoom) {
		t.Errorf("Room of a prefix of an existing id = %v, want ErrNoRoom", err)
	}

	// Messages: ids increase across rooms; history is oldest first and
	// bounded by n and by keepLast.
	if ms, err := st.LastMessages(ctx, "lobby", 10); err != nil || len(ms) != 0 {
		t.Errorf("LastMessages of an empty room = %v, %v; want none", ms, err)
	}
	at := time.Date(2026, 11, 3, 10, 0, 0, 0, time.UTC)
	var added []chat.Mensaje
	var lastID int64
	for i := range keepLast + 3 {
		room := "lobby"
		if i%3 == 2 {
			room = "dev"
		}
		m, err := st.AddMessage(ctx, room, chat.Mensaje{Contenido: fmt.Sprintf("hola %d 🌵", i), Autor: "ana", Timestamp: at.Add(time.Duration(i) * time.Millisecond)})
		if err != nil {
			t.Fatalf("AddMessage: %v", err)
		}
		if m.ID <= lastID {
			t.Errorf("AddMessage id %d after %d, want increasing", m.ID, lastID)
		}
		lastID = m.ID
		if room == "lobby" {
			added = append(added, m)
		}
	}
	// lobby got 6 messages, keeps the last keepLast (5).
	lobby := added[len(added)-keepLast:]
	ms, err := st.LastMessages(ctx, "lobby", 100)
	if err != nil || !messagesEqual(ms, lobby) {
		t.Errorf("LastMessages(lobby, 100) = %v, %v;\nwant %v", ms, err, lobby)
	}
	ms, err = st.LastMessages(ctx, "lobby", 2)
	if err != nil || !messagesEqual(ms, lobby[len(lobby)-2:]) {
		t.Errorf("LastMessages(lobby, 2) = %v, %v;\nwant %v", ms, err, lobby[len(lobby)-2:])
	}
	if ms, err := st.LastMessages(ctx, "dev", 100); err != nil || len(ms) != 2 || ms[0].Contenido != "hola 2 🌵" || ms[1].Contenido != "hola 5 🌵" {
		t.Errorf("LastMessages(dev) = %v, %v; want its 2 messages", ms, err)
	}

	// Concurrent adds: distinct ids, and the history stays bounded and in
	// id order.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ids := map[int64]bool{}
	for range 8 {
		wg.Go(func() {
			for range 5 {
				m, err := st.AddMessage(context.Background(), "busy", chat.Mensaje{Contenido: "x", Autor: "bob", Timestamp: at})
				if err != nil {
					t.Errorf("AddMessage: %v", err)
					return
				}
				mu.Lock()
				if ids[m.ID] {
					t.Errorf("id %d given twice", m.ID)
				}
				ids[m.ID] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	ms, err = st.LastMessages(ctx, "busy", 100)
	if err != nil || len(ms) != keepLast {
		t.Fatalf("LastMessages(busy) = %d messages, %v; want %d", len(ms), err, keepLast)
	}
	for i := 1; i < len(ms); i++ {
		if ms[i].ID <= ms[i-1].ID {
			t.Errorf("LastMessages(busy) ids not increasing: %d then %d", ms[i-1].ID, ms[i].ID)
		}
	}

	testJoinAttempts(t, st, elapse)
}

func messagesEqual(a, b []chat.Mensaje) bool {
	return slices.EqualFunc(a, b, func(x, y chat.Mensaje) bool {
		return x.ID == y.ID && x.Contenido == y.Contenido && x.Autor == y.Autor && x.Timestamp.Equal(y.Timestamp)
	})
}

// testJoinAttempts checks the join-attempt counters: per user and room,
// cleared on demand, atomic under concurrency, forgotten after the window.
func testJoinAttempts(t *testing.T, st chat.Store, elapse func(time.Duration)) {
	ctx := t.Context()
	count := func(room, user string, window time.Duration) int64 {
		t.Helper()
		n, err := st.CountJoinAttempt(ctx, room, user, window)
		if err != nil {
			t.Fatalf("CountJoinAttempt(%s, %s): %v", room, user, err)
		}
		return n
	}
	for want := int64(1); want <= 3; want++ {
		if n := count("r1", "1", time.Minute); n != want {
			t.Errorf("attempt %d of user 1 on r1 counted as %d", want, n)
		}
	}
	// Another user, another room, or an ambiguous pair: counted apart.
	if n := count("r1", "2", time.Minute); n != 1 {
		t.Errorf("user 2 on r1: %d, want 1 (counts are per user)", n)
	}
	if n := count("r2", "1", time.Minute); n != 1 {
		t.Errorf("user 1 on r2: %d, want 1 (counts are per room)", n)
	}
	if a, b := count("a:b", "c", time.Minute), count("a", "b:c", time.Minute); a != 1 || b != 1 {
		t.Errorf(`("a:b","c") and ("a","b:c") share a count: %d, %d`, a, b)
	}
	if err := st.ClearJoinAttempts(ctx, "r1", "1"); err != nil {
		t.Fatalf("ClearJoinAttempts: %v", err)
	}
	if n := count("r1", "1", time.Minute); n != 1 {
		t.Errorf("after ClearJoinAttempts: %d, want 1", n)
	}
	if n := count("r1", "2", time.Minute); n != 2 {
		t.Errorf("clearing user 1's count changed user 2's: %d, want 2", n)
	}

	// Concurrent attempts each get their own number: none slips past a limit.
	const parallel = 20
	var wg sync.WaitGroup
	got := make(chan int64, parallel)
	for range parallel {
		wg.Go(func() {
			n, err := st.CountJoinAttempt(context.Background(), "busy", "9", time.Minute)
			if err != nil {
				t.Errorf("CountJoinAttempt: %v", err)
			}
			got <- n
		})
	}
	wg.Wait()
	close(got)
	seen := map[int64]bool{}
	for n := range got {
		if n < 1 || n > parallel || seen[n] {
			t.Errorf("concurrent attempt counted as %d (seen: %v)", n, seen)
		}
		seen[n] = true
	}

	// The window starts at the first attempt; once it passes, the count
	// starts over.
	const window = 150 * time.Millisecond
	count("short", "1", window)
	count("short", "1", window)
	elapse(3 * window)
	if n := count("short", "1", window); n != 1 {
		t.Errorf("after the window passed: %d, want 1", n)
	}
}
