package sse_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A client that stops reading holds up nobody: parked streams share their
// deliverers, and a stream whose client's socket is full finishes its
// write on the side. Both streams here are on the one deliverer; the
// reading one gets every message while the other reads nothing.
func TestSlowClientHoldsUpNobody(t *testing.T) {
	// No heartbeat: every delivery runs on the deliverer (a heartbeat's
	// check would deliver on its own goroutine). A write timeout longer than
	// the test: the slow client reads nothing while the other one gets 16
	// MiB, which a loaded machine can take longer than the default 10 s to
	// deliver, and dropping a client that took nothing for that long is
	// right, but not what this test is about.
	e := newEnv(t, envConfig{Shards: 1, Heartbeat: time.Hour, WriteTimeout: 10 * time.Minute})
	addr := strings.TrimPrefix(e.srv.URL, "http://")
	// A receive buffer of fixed size (no autotuning up to 32 MiB), set
	// before the connect so that the window is scaled for it, and larger
	// than the loopback MSS so that the window reopens promptly once the
	// client reads again.
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 256<<10)
		})
		return errors.Join(err, serr)
	}}
	slow, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fmt.Fprintf(slow, "GET %s?%s&join=room:a HTTP/1.1\r\nHost: %s\r\n\r\n", ssePath, streamQuery(t, "1", "2.0.0"), addr)
	// Read until joined, then read nothing more.
	br := bufio.NewReader(slow)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("the slow client's stream: %v", err)
		}
		if strings.Contains(line, `"presence_state"`) {
			break
		}
	}

	s, _ := e.connect(t, "2", "2.0.0", "join=room:a")
	requireJoined(t, s.frames(t, 3), "room:a", "join:1", "2")
	// 8 rounds of 16 broadcasts of 128 KiB: 16 MiB, more than the slow
	// client's socket buffers hold (4 MiB to send at most, here). Rounds,
	// so that the reading client never falls behind the history.
	big := strings.Repeat("x", 128<<10)
	const rounds, perRound = 8, 16
	for r := range rounds {
		for i := 1; i <= perRound; i++ {
			if err := e.gw.Broadcast(t.Context(), "room:a", "big", map[string]any{"n": r*perRound + i, "pad": big}); err != nil {
				t.Fatalf("Broadcast: %v", err)
			}
		}
		for i, ev := range s.frames(t, perRound) {
			if want := fmt.Sprintf(`"room:a","big",{"n":%d,`, r*perRound+i+1); !strings.Contains(ev.Data, want) {
				t.Fatalf("round %d, frame %d: want %s..., got %.80s", r, i, want, ev.Data)
			}
		}
	}

	// The slow client reads again: its stream went on, and it gets what
	// is published next (what it missed meanwhile may have left the
	// history: it is told with a phx_error, not checked here).
	if err := e.gw.Broadcast(t.Context(), "room:a", "last", map[string]int{"n": 999}); err != nil {
		t.Fatalf("Broadcast: %v", err)
	}
	_ = slow.SetReadDeadline(time.Now().Add(waitFor))
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("the slow client's stream, reading again: %v", err)
		}
		if strings.Contains(line, `"room:a","last",{"n":999}`) {
			break
		}
	}
}
