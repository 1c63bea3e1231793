package topics

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"sync"
	"time"
)

// MemoryBroker is a Broker for a single instance, holding its logs in memory.
type MemoryBroker struct {
	hub       *Hub
	maxLen    int
	budgets   []ByteBudget
	retention time.Duration
	now       func() time.Time

	mu   sync.Mutex
	logs map[string]*memLog
	// floor is the highest head of any forgotten log: a recreated log starts
	// above it even if it was created faster than the clock moves.
	floor uint64
}

type memLog struct {
	head    uint64
	records []Record // the newest records, at most maxLen
	size    int      // the bytes of the records' Data
	touched time.Time
}

// NewMemoryBroker returns a broker keeping at most maxLen records per topic
// (1000 if maxLen <= 0), and at most a budget's bytes per topic it selects
// (the first of budgets that does), and forgetting a topic retention after
// its last publish (see Sweep).
func NewMemoryBroker(maxLen int, retention time.Duration, budgets ...ByteBudget) *MemoryBroker {
	if maxLen <= 0 {
		maxLen = 1000
	}
	return &MemoryBroker{hub: NewHub(), maxLen: maxLen, budgets: slices.Clone(budgets), retention: retention, now: time.Now, logs: make(map[string]*memLog)}
}

// Publish implements Broker. Records that the bounds would drop at once (the
// oldest of a batch larger than a bound) are not kept; their Seqs are still
// used.
func (b *MemoryBroker) Publish(_ context.Context, topic string, data ...[]byte) (uint64, error) {
	budget := budgetFor(b.budgets, topic)
	b.mu.Lock()
	l := b.logLocked(topic)
	skip := len(data) - keptOfBatch(data, b.maxLen, budget)
	if skip > 0 {
		// Records older than a skipped one go too: a log is contiguous.
		l.records, l.size = nil, 0
	}
	for i, d := range data {
		l.head++
		if i >= skip {
			l.records = append(l.records, Record{Seq: l.head, Data: bytes.Clone(d)})
			l.size += len(d)
		}
	}
	drop := max(len(l.records)-b.maxLen, 0)
	for _, r := range l.records[:drop] {
		l.size -= len(r.Data)
	}
	for budget > 0 && l.size > budget && drop < len(l.records)-1 {
		l.size -= len(l.records[drop].Data)
		drop++
	}
	if drop > 0 {
		// Copy rather than reslice so the dropped records can be collected.
		l.records = append(make([]Record, 0, b.maxLen), l.records[drop:]...)
	}
	l.touched = b.now()
	head := l.head
	b.mu.Unlock()
	b.hub.Wake(topic)
	return head, nil
}

// logLocked returns topic's log, creating it. A new log starts its sequence
// at the current time in microseconds rather than at zero, so that a topic
// forgotten and created again never reuses a sequence number: a reader still
// holding a cursor from the old log sees a Gap instead of silently skipping
// the new log's first records.
func (b *MemoryBroker) logLocked(topic string) *memLog {
	l := b.logs[topic]
	if l == nil {
		now := b.now()
		l = &memLog{head: max(uint64(now.UnixMicro()), b.floor+1), touched: now}
		b.logs[topic] = l
	}
	return l
}

// Read implements Broker.
func (b *MemoryBroker) Read(_ context.Context, topic string, after uint64, limit int) (Batch, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.logs[topic]
	if l == nil {
		return Batch{Gap: after > 0}, nil
	}
	batch := Batch{Head: l.head}
	if after > l.head {
		batch.Gap = true
		return batch, nil
	}
	if after == l.head {
		return batch, nil
	}
	if len(l.records) == 0 {
		batch.Gap = true // records after the cursor were published and dropped
		return batch, nil
	}
	first := l.records[0].Seq
	if after+1 < first {
		batch.Gap = true
		after = first - 1
	}
	recs := l.records[after+1-first:]
	if limit > 0 && len(recs) > limit {
		recs = recs[:limit]
	}
	batch.Records = append([]Record(nil), recs...)
	return batch, nil
}

// ReadMany implements Broker.
func (b *MemoryBroker) ReadMany(ctx context.Context, reqs []ReadRequest) ([]Batch, error) {
	out := make([]Batch, len(reqs))
	for i, r := range reqs {
		out[i], _ = b.Read(ctx, r.Topic, r.After, r.Limit)
		if r.Acked {
			b.ack(r.Topic, r.After)
		}
	}
	return out, nil
}

// ack drops the records of topic up to after (see ReadRequest.Acked).
func (b *MemoryBroker) ack(topic string, after uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.logs[topic]
	// A cursor past the head was never handed out (a forged or corrupted
	// token): it acknowledges nothing.
	if l == nil || after > l.head || len(l.records) == 0 || l.records[0].Seq > after {
		return
	}
	n, _ := slices.BinarySearchFunc(l.records, after+1, func(r Record, seq uint64) int {
		return cmp.Compare(r.Seq, seq)
	})
	for _, r := range l.records[:n] {
		l.size -= len(r.Data)
	}
	if n == len(l.records) {
		l.records = nil
		return
	}
	// Copy rather than reslice so the dropped records can be collected.
	l.records = append([]Record(nil), l.records[n:]...)
}

// Head implements Broker. It creates the topic's log if needed, so that the
// position it returns stays valid for a later Read.
func (b *MemoryBroker) Head(_ context.Context, topic string) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	l := b.logLocked(topic)
	l.touched = b.now()
	return l.head, nil
}

// Delete implements Broker.
func (b *MemoryBroker) Delete(_ context.Context, topic string) error {
	b.mu.Lock()
	b.forgetLocked(topic)
	b.mu.Unlock()
	return nil
}

func (b *MemoryBroker) forgetLocked(topic string) {
	if l := b.logs[topic]; l != nil {
		b.floor = max(b.floor, l.head)
		delete(b.logs, topic)
	}
}

// Listen implements Broker.
func (b *MemoryBroker) Listen(topics ...string) *Listener { return b.hub.Listen(topics...) }

// Sweep drops the records of topics not published to for the retention
// period, and forgets such topics entirely after ten times that, and returns
// how many topics it forgot. A reader already at the head of a quiet topic
// sees no Gap: only its sequence counter is kept, as the Redis broker keeps
// its counter longer than its log. Call Sweep periodically; Run does.
func (b *MemoryBroker) Sweep() int {
	if b.retention <= 0 {
		return 0
	}
	now := b.now()
	n := 0
	b.mu.Lock()
	for t, l := range b.logs {
		switch {
		case l.touched.Before(now.Add(-10 * b.retention)):
			b.forgetLocked(t)
			n++
		case l.touched.Before(now.Add(-b.retention)):
			l.records, l.size = nil, 0
		}
	}
	b.mu.Unlock()
	return n
}

// Run sweeps every interval until ctx is done.
func (b *MemoryBroker) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.Sweep()
		}
	}
}
