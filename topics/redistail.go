package topics

import (
	"sync"
)

// tails keeps, per topic listened to on this instance, the newest records
// read from Redis and the newest sequence number a publish announced, so
// that when one broadcast wakes many local readers of a topic, one of them
// reads Redis and the others are answered from memory: a broadcast costs
// each instance one read, not one per subscriber.
//
// A read is answered from memory only when it asks for records the tail
// holds up to the announced sequence: the reader was woken by a publish
// whose records are all here; or when it is Recent (the reader was just
// woken) and nothing was announced past its cursor. Other readers with
// nothing announced past their cursor (a first read, a check after a quiet
// wait) read Redis. Announcements lost with the wake-up subscription are
// forgotten when it is back (doubtAll), before every listener is woken, so
// that the woken readers' Recent reads go to Redis.
type tails struct {
	mu     sync.Mutex
	topics map[string]*tail
	// inflight holds the fills under way, by topic: readers that miss wait
	// for one in progress rather than read the same records again.
	inflight map[string]chan struct{}
}

// tail is the cached end of one topic's log: Records with contiguous Seqs,
// and the newest Seq announced by a wake-up or a publish.
type tail struct {
	records   []Record
	announced uint64
}

// tailLen bounds the records kept per topic: a burst of broadcasts longer
// than this between two reads of a subscriber is read from Redis.
const tailLen = 256

func newTails() *tails {
	return &tails{topics: make(map[string]*tail), inflight: make(map[string]chan struct{})}
}

// watch starts keeping topic's tail.
func (ts *tails) watch(topic string) {
	ts.mu.Lock()
	if ts.topics[topic] == nil {
		ts.topics[topic] = &tail{}
	}
	ts.mu.Unlock()
}

// announce records that topic's log reached seq, if topic is watched.
func (ts *tails) announce(topic string, seq uint64) {
	ts.mu.Lock()
	if t := ts.topics[topic]; t != nil {
		t.announced = max(t.announced, seq)
	}
	ts.mu.Unlock()
}

// doubt marks topic's announced Seq unknown (a publish whose outcome is
// unknown): its next reads go to Redis.
func (ts *tails) doubt(topic string) {
	ts.mu.Lock()
	if t := ts.topics[topic]; t != nil {
		t.announced = 0
	}
	ts.mu.Unlock()
}

// doubtAll marks every topic's announced Seq unknown: after the wake-up
// subscription was lost, announcements may have been missed, so the next
// read of each topic goes to Redis, even a Recent one.
func (ts *tails) doubtAll() {
	ts.mu.Lock()
	for _, t := range ts.topics {
		t.announced = 0
	}
	ts.mu.Unlock()
}

// forget drops what is kept for topic.
func (ts *tails) forget(topic string) {
	ts.mu.Lock()
	delete(ts.topics, topic)
	ts.mu.Unlock()
}

// prune keeps only the topics keep reports true for.
func (ts *tails) prune(keep func(topic string) bool) {
	ts.mu.Lock()
	for topic := range ts.topics {
		if !keep(topic) {
			delete(ts.topics, topic)
		}
	}
	ts.mu.Unlock()
}

// lookup answers r from memory if it can.
func (ts *tails) lookup(r ReadRequest) (Batch, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.lookupLocked(r)
}

func (ts *tails) lookupLocked(r ReadRequest) (Batch, bool) {
	t := ts.topics[r.Topic]
	if t == nil || t.announced == 0 {
		return Batch{}, false // nothing heard yet
	}
	if r.After >= t.announced {
		// Nothing announced past the cursor: only a woken reader may take
		// that as the answer.
		if r.Recent && r.After == t.announced {
			return Batch{Head: t.announced}, true
		}
		return Batch{}, false
	}
	if len(t.records) == 0 {
		return Batch{}, false
	}
	first, last := t.records[0].Seq, t.records[len(t.records)-1].Seq
	if r.After+1 < first || last < t.announced {
		return Batch{}, false
	}
	recs := t.records[r.After+1-first:]
	if r.Limit > 0 && len(recs) > r.Limit {
		recs = recs[:r.Limit]
	}
	// The records are shared between readers, who only read them.
	return Batch{Records: recs, Head: last}, true
}

// store merges what a read from Redis returned into the tail of its topic.
// Its records are kept only if keep: a topic with a single reader here (a
// session's mailbox) gains nothing from them.
func (ts *tails) store(r ReadRequest, b Batch, keep bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t := ts.topics[r.Topic]
	if t == nil {
		return // not a topic listened to here
	}
	t.announced = max(t.announced, b.Head)
	if !keep {
		t.records = nil
		return
	}
	if b.Gap || len(b.Records) == 0 {
		return
	}
	if n := len(t.records); n > 0 && b.Records[0].Seq <= t.records[n-1].Seq+1 && b.Records[0].Seq >= t.records[0].Seq {
		// Overlapping or adjacent: keep the older part, append the rest.
		keep := t.records[:b.Records[0].Seq-t.records[0].Seq]
		t.records = append(keep[:len(keep):len(keep)], b.Records...)
	} else {
		t.records = append([]Record(nil), b.Records...)
	}
	if over := len(t.records) - tailLen; over > 0 {
		t.records = append([]Record(nil), t.records[over:]...)
	}
}

// waitFill waits for a fill of topic in progress, if any, and reports
// whether there was one.
func (ts *tails) waitFill(topic string) bool {
	ts.mu.Lock()
	c := ts.inflight[topic]
	ts.mu.Unlock()
	if c == nil {
		return false
	}
	<-c
	return true
}

// startFill marks a fill of topic in progress; done ends it. It reports
// false if another is already in progress.
func (ts *tails) startFill(topic string) (done func(), ok bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if _, busy := ts.inflight[topic]; busy {
		return nil, false
	}
	c := make(chan struct{})
	ts.inflight[topic] = c
	return func() {
		ts.mu.Lock()
		delete(ts.inflight, topic)
		ts.mu.Unlock()
		close(c)
	}, true
}
