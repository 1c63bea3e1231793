package sse_test

import (
	"fmt"
	"sync"
	"testing"
)

// TestJoinPostedRightAfterTheSessionEvent: a client that POSTs its join as
// soon as it has the session event, before the server's stream has gone on
// (parked or not), gets everything the join brings, the presence_diff from
// the topic's log included, and the broadcasts after it. The stream must
// listen before it hands the session out: a subscription adopting the
// session as it was created would otherwise not know of the join, and read
// nothing of the joined topic until the session changed again.
func TestJoinPostedRightAfterTheSessionEvent(t *testing.T) {
	for _, noPark := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoPark=%v", noPark), func(t *testing.T) {
			gate := make(chan struct{})
			var open sync.Once
			release := func() { open.Do(func() { close(gate) }) }
			t.Cleanup(release)
			e := newEnv(t, envConfig{NoPark: noPark, AfterSessionEvent: func() { <-gate }})
			s, h := e.connect(t, "42", "2.0.0", "")
			// The stream waits after its session event until the join
			// is applied.
			e.send(t, h, `["1","1","room:a","phx_join",{"name":"alice"}]`)
			release()
			requireJoined(t, s.frames(t, 3), "room:a", "1", "42")
			e.broadcast(t, "room:a", 0)
			s.expect(t, news("room:a", 0))
		})
	}
}
