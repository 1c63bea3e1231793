package loadgen

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Client states.
const (
	stateConnecting int32 = iota
	stateConnected
	stateFailed
)

// client is what SSE and LongPoll clients share: identity, topics, join
// tracking and the handling of the frames they receive. Its fields are used
// by the client's own reading goroutine only, except state (atomic) and
// inWindow (set by the engine before publishing starts, read after every
// client stopped).
type client struct {
	e      *engine
	idx    int
	base   string // the target's base URL
	http   *http.Client
	user   string // user id
	token  string // signed user token
	pusher bool

	topics  []int    // global topic indices
	names   []string // their names
	joinRef []string // current join ref per topic ("" while not joined)
	joined  []bool
	nJoined int
	refN    int // ref counter for joins and heartbeats

	// rejoin marks topics to join again after phx_error or phx_close (or a
	// refused rejoin), not before rejoinAt: phoenix.js waits a second too.
	rejoin   []bool
	rejoinAt time.Time

	startedAt time.Time // when it began connecting
	state     atomic.Int32
	inWindow  bool // connected when the window opened: its deliveries are checked
	check     checker
}

// topicIndex returns the local index of a topic name, or -1.
func (c *client) topicIndex(topic []byte) int {
	for i, n := range c.names {
		if string(topic) == n {
			return i
		}
	}
	return -1
}

// resetJoins forgets every join (a new session has none).
func (c *client) resetJoins() {
	for i := range c.joined {
		c.joined[i] = false
		c.joinRef[i] = ""
		c.rejoin[i] = false
	}
	c.nJoined = 0
}

// nextRef returns a fresh ref with a prefix saying what it is for.
func (c *client) nextRef(prefix byte) string {
	c.refN++
	return string(prefix) + strconv.Itoa(c.refN)
}

// markConnected records that the client connected and joined every topic.
func (c *client) markConnected() {
	if c.state.CompareAndSwap(stateConnecting, stateConnected) {
		c.e.connectHist.Record(time.Since(c.startedAt))
		c.e.connected.Add(1)
		c.e.ready.Add(1)
		c.e.noteReady()
	}
}

// markFailed records that the client failed to connect, with why.
func (c *client) markFailed(kind, example string) {
	if c.state.CompareAndSwap(stateConnecting, stateFailed) {
		c.e.failed.Add(1)
		c.e.ready.Add(1)
		c.e.noteReady()
		c.e.failKinds.add(kind, example)
	}
}

// connecting reports whether the client has not connected yet.
func (c *client) connecting() bool { return c.state.Load() == stateConnecting }

// handleFrame handles one V2 frame the server sent.
func (c *client) handleFrame(data []byte, now time.Time, transport string) {
	e := c.e
	f, err := parseFrame(data)
	if err != nil {
		e.errs.add("bad_frame", fmt.Sprintf("%s: %v: %.200s", transport, err, data))
		return
	}
	switch string(f.event) {
	case e.event:
		c.onMessage(f, now)
	case "phx_reply":
		c.onReply(f, transport)
	case "phx_error", "phx_close":
		i := c.topicIndex(f.topic)
		if i < 0 || !c.joined[i] || string(f.joinRef) != c.joinRef[i] {
			return // an earlier join's, or not ours
		}
		c.joined[i] = false
		c.nJoined--
		c.markRejoin(i)
		e.errs.add(transport+"/"+string(f.event), fmt.Sprintf("%s on %s: %.200s", f.event, f.topic, f.payload))
	}
}

// onReply handles a phx_reply: to a join, a push or a heartbeat.
func (c *client) onReply(f frame, transport string) {
	var vals [2][]byte
	if err := objectFields(f.payload, []string{"status", "response"}, vals[:]); err != nil {
		c.e.errs.add("bad_frame", fmt.Sprintf("%s: reply payload: %v", transport, err))
		return
	}
	ok := string(vals[0]) == `"ok"`
	if len(f.ref) > 0 && f.ref[0] == 'p' {
		if !ok {
			c.e.errs.add("push/refused", fmt.Sprintf("%s replied %s %.200s", f.topic, vals[0], vals[1]))
		}
		return
	}
	i := c.topicIndex(f.topic)
	if i < 0 || c.joinRef[i] == "" || string(f.ref) != c.joinRef[i] {
		return // a heartbeat's, or a stale join's
	}
	if !ok {
		c.joinRef[i] = ""
		reason := fmt.Sprintf("join of %s refused: %.200s", f.topic, vals[1])
		if c.connecting() {
			c.markFailed("join_refused", reason)
			return
		}
		c.e.errs.add(transport+"/join_refused", reason)
		c.markRejoin(i)
		return
	}
	if !c.joined[i] {
		c.joined[i] = true
		c.nJoined++
		if !c.connecting() {
			c.e.rejoins.Add(1)
		}
	}
	if c.nJoined == len(c.topics) {
		c.markConnected()
	}
}

// onMessage handles a message of the measured event on a topic.
func (c *client) onMessage(f frame, now time.Time) {
	e := c.e
	i := c.topicIndex(f.topic)
	if i < 0 || !e.measuring.Load() {
		return
	}
	p, s, t, ok := e.decode(f.payload)
	if !ok {
		return // not one of ours (another user's chat message), or counted as bad
	}
	switch c.check.Observe(p, i, s) {
	case Duplicate:
		e.dups.Add(1)
	default:
		e.delivered.Add(1)
		e.hist.Record(now.Sub(time.Unix(0, t)))
	}
}

// rejoinDelay is how long a client waits before rejoining a topic.
const rejoinDelay = time.Second

// markRejoin marks topic i for rejoining after rejoinDelay.
func (c *client) markRejoin(i int) {
	c.rejoin[i] = true
	c.rejoinAt = time.Now().Add(rejoinDelay)
}

// rejoinDue reports whether topics wait for rejoining and it is time.
func (c *client) rejoinDue() bool {
	if time.Now().Before(c.rejoinAt) {
		return false
	}
	for _, r := range c.rejoin {
		if r {
			return true
		}
	}
	return false
}

// pendingRejoins returns the topics marked for rejoining, and unmarks them.
func (c *client) pendingRejoins() []int {
	var out []int
	for i, r := range c.rejoin {
		if r {
			out = append(out, i)
			c.rejoin[i] = false
		}
	}
	return out
}

// joinFrame appends a phx_join frame for topic i with a fresh ref, which
// it records as the topic's join ref.
func (c *client) joinFrame(dst []byte, i int) []byte {
	ref := c.nextRef('j')
	c.joinRef[i] = ref
	dst = append(dst, `["`...)
	dst = append(dst, ref...)
	dst = append(dst, `","`...)
	dst = append(dst, ref...)
	dst = append(dst, `",`...)
	dst = strconv.AppendQuote(dst, c.names[i])
	return append(dst, `,"phx_join",{}]`...)
}

// errorTable counts errors by kind, with the first example of each.
type errorTable struct {
	mu sync.Mutex
	m  map[string]*ErrorCount
}

// ErrorCount is how often one kind of error happened, with an example.
type ErrorCount struct {
	Count   int64  `json:"count"`
	Example string `json:"example,omitempty"`
}

func (t *errorTable) add(kind, example string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*ErrorCount{}
	}
	ec := t.m[kind]
	if ec == nil {
		ec = &ErrorCount{Example: example}
		t.m[kind] = ec
	}
	ec.Count++
}

// snapshot returns a copy of the table.
func (t *errorTable) snapshot() map[string]ErrorCount {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make(map[string]ErrorCount, len(t.m))
	for k, v := range t.m {
		out[k] = *v
	}
	return out
}

// total returns the sum of every kind's count.
func (t *errorTable) total() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var n int64
	for _, v := range t.m {
		n += v.Count
	}
	return n
}

// sortedKinds returns the kinds of m, most frequent first.
func sortedKinds(m map[string]ErrorCount) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(a, b int) bool {
		if m[keys[a]].Count != m[keys[b]].Count {
			return m[keys[a]].Count > m[keys[b]].Count
		}
		return keys[a] < keys[b]
	})
	return keys
}

// sleepCtx sleeps for d or until ctx is done, and reports whether it slept
// the whole time.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// backoff returns the wait before retry n (1-based): 100 ms doubling to 5 s.
func backoff(n int) time.Duration {
	d := 100 * time.Millisecond
	for i := 1; i < n && d < 5*time.Second; i++ {
		d *= 2
	}
	return min(d, 5*time.Second)
}
