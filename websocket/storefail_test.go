package websocket_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sluicegw/sluice/internal/testroom"
)

// A store that fails for a while (slow, not down) never closes a socket:
// it waits, and once the store answers it delivers every message published
// meanwhile, in order, exactly once.
func TestSlowStoreKeepsSocket(t *testing.T) {
	var fb *testroom.FlakyBroker
	e := newEnv(t, envConfig{WrapBroker: testroom.WrapFlaky(&fb)})
	c := e.connect(t, "42")
	c.join("room:a", "1")

	fb.SetDown(true)
	for n := 1; n <= 10; n++ {
		if err := e.gw.Broadcast(context.Background(), "room:a", "news", map[string]int{"n": n}); err != nil {
			t.Fatalf("Broadcast: %v", err)
		}
	}
	fb.WaitFailures(t, 4, waitFor) // the wake-up's try, and retries after it
	fb.SetDown(false)

	for n := 1; n <= 10; n++ {
		f := c.waitFrame(fmt.Sprintf("news %d", n), func(f testroom.Frame) bool { return f.Event == "news" })
		if want := fmt.Sprintf(`{"n":%d}`, n); string(f.Payload) != want {
			t.Fatalf("news %d: got %s; seen: %s", n, f.Payload, c.seenText())
		}
	}
	c.requireOpen("room:a", "2")
	if got := strings.Count(c.seenText(), `"news"`); got != 10 {
		t.Fatalf("want each of the 10 messages once, got %d news frames: %s", got, c.seenText())
	}
}
