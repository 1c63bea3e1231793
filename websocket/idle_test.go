//go:build linux

package websocket_test

import (
	"fmt"
	"runtime"
	"testing"
	"time"

	gws "github.com/gorilla/websocket"
)

// Idle connections hold no goroutine of the server (the idle poller holds
// them), yet each still reads what its client sends, answers it, and ends
// its session when the client goes.
func TestIdleConnectionsHoldNoGoroutine(t *testing.T) {
	e := newEnv(t, envConfig{})
	// The poller's goroutine, started by the first connection.
	first, _, err := e.tryDial(query(t, "100", "2.0.0"), nil)
	if err != nil {
		t.Fatal(err)
	}
	until(t, "the first connection", func() bool { return e.obs.open() == 1 })
	base := runtime.NumGoroutine()

	const n = 20
	conns := []*gws.Conn{first}
	for i := range n {
		c, _, err := e.tryDial(query(t, fmt.Sprint(200+i), "2.0.0"), nil)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	until(t, "every connection open", func() bool { return e.obs.open() == n+1 })
	// The dials' own goroutines end; the server keeps none per connection
	// (a few for other work, e.g. a delivery that is finishing, may come and go).
	until(t, fmt.Sprintf("the goroutines to settle near %d (not %d more)", base, n), func() bool {
		return runtime.NumGoroutine() < base+n/2
	})

	// Each parked connection is read when its client sends: a heartbeat each,
	// answered.
	for i, c := range conns {
		ref := fmt.Sprint(i + 1)
		if err := c.WriteMessage(gws.TextMessage, fmt.Appendf(nil, `[null,%q,"phoenix","heartbeat",{}]`, ref)); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(waitFor))
		_, msg, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("connection %d: no heartbeat reply: %v", i, err)
		}
		if want := fmt.Sprintf(`[null,%q,"phoenix","phx_reply",{"response":{},"status":"ok"}]`, ref); string(msg) != want {
			t.Fatalf("connection %d: got %s, want %s", i, msg, want)
		}
	}
	until(t, "the read turns to end", func() bool { return runtime.NumGoroutine() < base+n/2 })

	// A client that goes (cut, or a close frame) ends its session; its
	// connection is not left parked.
	for i, c := range conns {
		if i%2 == 0 {
			_ = c.NetConn().Close()
		} else {
			_ = c.WriteControl(gws.CloseMessage, gws.FormatCloseMessage(gws.CloseNormalClosure, ""), time.Now().Add(time.Second))
			_ = c.Close()
		}
	}
	until(t, "every connection released", func() bool { return e.obs.open() == 0 })
	until(t, "every session ended", func() bool { return e.obs.count(&e.obs.ended, "closed") == n+1 })
}
