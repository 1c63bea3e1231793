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
)

// keepLast is the history bound of the stores under test.
const keepLast = 5

// TestStores runs the same checks on every Store: the memory store, Redis on
// miniredis, and the Redis at SLUICE_TEST_REDIS if set.
func TestStores(t *testing.T) {
	t.Run("memory", func(t *testing.T) { testStore(t, chat.NewMemoryStore(keepLast)) })
	t.Run("miniredis", func(t *testing.T) {
		mr := miniredis.RunT(t)
		testStore(t, newRedisStore(t, redis.NewClient(&redis.Options{Addr: mr.Addr()})))
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
		testStore(t, newRedisStore(t, redis.NewClient(opts)))
	})
}

// newRedisStore returns a RedisStore under a fresh prefix whose keys are
// deleted when t ends.
func newRedisStore(t *testing.T, c *redis.Client) *chat.RedisStore {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "sluicetest:chat:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		defer c.Close()
		ctx := context.Background() // t.Context() is done by now
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			if err := c.Del(ctx, iter.Val()).Err(); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
		if err := iter.Err(); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return chat.NewRedisStore(c, prefix, keepLast)
}

func testStore(t *testing.T, st chat.Store) {
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
}

func messagesEqual(a, b []chat.Mensaje) bool {
	return slices.EqualFunc(a, b, func(x, y chat.Mensaje) bool {
		return x.ID == y.ID && x.Contenido == y.Contenido && x.Autor == y.Autor && x.Timestamp.Equal(y.Timestamp)
	})
}
