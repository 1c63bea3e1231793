package gateway

import (
	"bytes"
	"slices"
	"sync"
	"sync/atomic"
)

// recordCache shares, between the subscribers of a topic on this instance,
// the work every one of them would otherwise redo for each broadcast record:
// decoding it, and encoding its frame for their serializer. A broadcast to N
// local subscribers is then decoded once and encoded once per protocol
// version, not N times.
//
// Entries are keyed by broker topic and sequence number and checked against
// the record's bytes, so a topic whose log was dropped and restarted (its
// sequence numbers reused) never gets another record's frame. The cache keeps
// the latest recordCacheSize records; older ones are decoded again if read.
type recordCache struct {
	entries sync.Map // recordKey → *cachedRecord

	mu   sync.Mutex
	ring []recordKey // insertion order, for eviction
	next int
}

// recordCacheSize bounds the records kept decoded: enough for every local
// subscriber to catch up on a burst, small enough to stay a few MiB.
const recordCacheSize = 4096

type recordKey struct {
	topic string
	seq   uint64
}

// cachedRecord is one decoded record and its frames, encoded on first use.
type cachedRecord struct {
	data []byte
	rec  *record
	kind string
	// frames holds the broadcast frame per serializer (V1, V2), encoded by
	// the first subscriber that needs it. The slices are shared: read only.
	frames [2]atomic.Pointer[[]byte]
}

func newRecordCache() *recordCache {
	return &recordCache{ring: make([]recordKey, recordCacheSize)}
}

// get returns the decoded record of topic's record seq, decoding data on a
// miss.
func (rc *recordCache) get(topic string, seq uint64, data []byte) (*cachedRecord, error) {
	key := recordKey{topic, seq}
	if v, ok := rc.entries.Load(key); ok {
		if cr := v.(*cachedRecord); bytes.Equal(cr.data, data) {
			return cr, nil
		}
	}
	r, err := decodeRecord(data)
	if err != nil {
		return nil, err
	}
	cr := &cachedRecord{data: data, rec: r, kind: frameKind(&Message{Topic: r.Topic, Event: r.Event})}
	if _, loaded := rc.entries.Swap(key, cr); !loaded {
		rc.mu.Lock()
		if old := rc.ring[rc.next]; old.topic != "" {
			rc.entries.Delete(old)
		}
		rc.ring[rc.next] = key
		rc.next = (rc.next + 1) % len(rc.ring)
		rc.mu.Unlock()
	}
	return cr, nil
}

// frame returns the record as a broadcast on topic, encoded by ser; shared
// between subscribers, so callers must not modify it.
func (cr *cachedRecord) frame(ser Serializer, topic string) ([]byte, error) {
	i := -1
	switch ser.(type) {
	case V1:
		i = 0
	case V2:
		i = 1
	}
	if i >= 0 {
		if f := cr.frames[i].Load(); f != nil {
			return *f, nil
		}
	}
	f, err := ser.Encode(&Message{Topic: topic, Event: cr.rec.Event, Payload: cr.rec.Payload})
	if err != nil {
		return nil, err
	}
	f = slices.Clip(f) // an append by a reader must copy, not write into the shared array
	if i >= 0 {
		cr.frames[i].Store(&f)
	}
	return f, nil
}
