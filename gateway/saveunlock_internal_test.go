package gateway

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// TestSaveUnlockRetryKeepsNextHoldersSave: go-redis sends a pipeline again
// when its connection breaks before the reply (or its read times out),
// although Redis may have run it. A save+unlock run twice so must not write
// the session again once its lock is released: the second run would put back
// the stale session over what the next holder of the lock saved meanwhile.
func TestSaveUnlockRetryKeepsNextHoldersSave(t *testing.T) {
	addrs := map[string]string{"miniredis": miniredis.RunT(t).Addr()}
	if u := os.Getenv("SLUICE_TEST_REDIS"); u != "" {
		opts, err := redis.ParseURL(u)
		if err != nil {
			t.Fatalf("SLUICE_TEST_REDIS: %v", err)
		}
		addrs["redis"] = opts.Addr
	}
	for name, addr := range addrs {
		t.Run(name, func(t *testing.T) { testSaveUnlockRetry(t, addr) })
	}
}

func testSaveUnlockRetry(t *testing.T, addr string) {
	ctx := context.Background()
	direct := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { _ = direct.Close() })
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "sluicetest:" + hex.EncodeToString(b[:]) + ":"
	t.Cleanup(func() {
		keys, _ := direct.Keys(context.Background(), prefix+"*").Result()
		for _, k := range keys {
			_ = direct.Del(context.Background(), k).Err()
		}
	})

	const marker = "written-by-the-first-holder"
	px := newBreakingProxy(t, addr, []byte(marker))
	// A read timeout longer than the test: the retry comes from the
	// broken connection, after the next holder saved, however slow the
	// machine.
	viaProxy := redis.NewClient(&redis.Options{Addr: px.addr(), MaxRetries: 3, MinRetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 20 * time.Millisecond, ReadTimeout: time.Minute})
	t.Cleanup(func() { _ = viaProxy.Close() })
	first := NewRedisStore(viaProxy, RedisOptions{Prefix: prefix})
	next := NewRedisStore(direct, RedisOptions{Prefix: prefix})

	s := &Session{ID: "5e55" + hex.EncodeToString(make([]byte, 14)), UserID: json.RawMessage(`"u1"`), Vsn: "2.0.0", CreatedAt: time.Now().UTC()}
	if err := next.Create(ctx, s, time.Now().Add(time.Minute), 0); err != nil {
		t.Fatal(err)
	}
	// Once on the server, so that the run below finds its scripts there
	// (a first run that only learns a script is missing does nothing).
	l, warm, err := next.lockLoad(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := next.saveUnlock(ctx, warm, l); err != nil {
		t.Fatal(err)
	}

	l, mine, err := first.lockLoad(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The save+unlock reaches Redis, which runs it; before its reply
	// comes back, the next request takes the lock and saves; then the
	// connection breaks, and go-redis sends the pipeline again.
	px.onMarker = func() {
		deadline := time.Now().Add(20 * time.Second)
		for direct.Exists(ctx, first.lockKey(s.ID)).Val() != 0 {
			if time.Now().After(deadline) {
				t.Error("the first save+unlock never released the lock")
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
		l2, theirs, err := next.lockLoad(ctx, s.ID)
		if err != nil {
			t.Error(err)
			return
		}
		theirs.Name = "written-by-the-next-holder"
		if err := next.saveUnlock(ctx, theirs, l2); err != nil {
			t.Error(err)
		}
	}
	mine.Name = marker
	_ = first.saveUnlock(ctx, mine, l)
	if !px.broke() {
		t.Fatal("the proxy never saw the save+unlock: the test did not test anything")
	}
	got, err := next.Load(ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Name != "written-by-the-next-holder" {
		t.Fatalf("after the retried save+unlock the session is %q's, want the next holder's save kept", got.Name)
	}
	if n := direct.Exists(ctx, first.lockKey(s.ID)).Val(); n != 0 {
		t.Fatal("the lock is still held")
	}
}

// breakingProxy forwards TCP to a Redis. The first time a client sends
// marker, it runs onMarker once Redis had the bytes (not passing on Redis's
// replies meanwhile), then breaks that connection: the client gets no reply.
type breakingProxy struct {
	t        *testing.T
	ln       net.Listener
	to       string
	marker   []byte
	onMarker func()

	mu      sync.Mutex
	tripped bool
	done    chan struct{}
}

func newBreakingProxy(t *testing.T, to string, marker []byte) *breakingProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &breakingProxy{t: t, ln: ln, to: to, marker: marker, done: make(chan struct{})}
	var wg sync.WaitGroup
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); p.serve(c) }()
		}
	}()
	return p
}

func (p *breakingProxy) addr() string { return p.ln.Addr().String() }

// broke reports whether the proxy broke a connection on the marker.
func (p *breakingProxy) broke() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *breakingProxy) serve(c net.Conn) {
	defer c.Close()
	s, err := net.Dial("tcp", p.to)
	if err != nil {
		return
	}
	defer s.Close()
	var muted sync.Mutex // held while replies must not pass
	mute := false
	go func() {
		buf := make([]byte, 64<<10)
		for {
			n, err := s.Read(buf)
			muted.Lock()
			m := mute
			muted.Unlock()
			if n > 0 && !m {
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				_ = c.Close()
				return
			}
		}
	}()
	var seen []byte // what came from the client, for a marker split between reads
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			seen = append(seen, buf[:n]...)
			trip := false
			p.mu.Lock()
			if !p.tripped && bytes.Contains(seen, p.marker) {
				p.tripped, trip = true, true
			}
			p.mu.Unlock()
			if len(seen) > len(p.marker) {
				seen = seen[len(seen)-len(p.marker):]
			}
			if trip {
				muted.Lock()
				mute = true
				muted.Unlock()
				go func() {
					p.onMarker()
					close(p.done)
					_ = c.Close()
					_ = s.Close()
				}()
			}
			if _, werr := s.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err == io.EOF || err != nil {
			return
		}
	}
}
