package loadgen

// Every message the load generator publishes carries its publisher and a
// sequence number that increases by one per (publisher, topic), starting at
// 1 when the measurement window opens. Every client must receive every
// message of its topics once, and in order within each (publisher, topic)
// stream. A checker tracks this for one client, with a small fixed window
// of recently seen sequence numbers per stream, so that memory does not
// grow with the length of the run.

// seenWindow is how many sequence numbers behind the highest one seen a
// stream remembers exactly: a message that old arriving late is counted as
// out of order but cannot be told from a duplicate.
const seenWindow = 256

// streamState is one (publisher, topic) stream as one client sees it.
type streamState struct {
	high int64                   // highest seq seen; 0: none yet
	seen [seenWindow / 64]uint64 // bit seq%seenWindow: seq in (high-seenWindow, high] seen
}

// Observation is what a checker made of one message.
type Observation int

// Observations.
const (
	InOrder    Observation = iota // new and in order: the next, or after a gap
	Duplicate                     // seen before
	OutOfOrder                    // new, but after a later seq of its stream
)

// checker counts one client's deliveries.
type checker struct {
	streams map[uint64]*streamState
	// Unique counts distinct messages received (in order or not).
	Unique int64
	// Dups counts messages received again.
	Dups int64
	// OutOfOrder counts distinct messages received after a later one of
	// their stream.
	OutOfOrder int64
}

// streamKey identifies a (publisher, topic) stream.
func streamKey(publisher int64, topic int) uint64 {
	return uint64(publisher)<<20 | uint64(topic)&(1<<20-1)
}

func (s *streamState) bit(seq int64) (word int, mask uint64) {
	i := int(uint64(seq) % seenWindow)
	return i / 64, 1 << (i % 64)
}

// Observe records message seq of publisher on topic and says what it was.
// Sequence numbers below 1 are not ours to judge: callers reject them.
func (c *checker) Observe(publisher int64, topic int, seq int64) Observation {
	if c.streams == nil {
		c.streams = make(map[uint64]*streamState, 4)
	}
	k := streamKey(publisher, topic)
	s := c.streams[k]
	if s == nil {
		s = &streamState{}
		c.streams[k] = s
	}
	switch {
	case seq > s.high:
		// Forget the seqs that leave the window, then mark this one.
		if seq-s.high >= seenWindow {
			s.seen = [seenWindow / 64]uint64{}
		} else {
			for q := s.high + 1; q < seq; q++ {
				w, m := s.bit(q)
				s.seen[w] &^= m
			}
		}
		w, m := s.bit(seq)
		s.seen[w] |= m
		s.high = seq
		c.Unique++
		return InOrder
	case seq <= s.high-seenWindow:
		// Too old to know: count it as new and late.
		c.Unique++
		c.OutOfOrder++
		return OutOfOrder
	default:
		w, m := s.bit(seq)
		if s.seen[w]&m != 0 {
			c.Dups++
			return Duplicate
		}
		s.seen[w] |= m
		c.Unique++
		c.OutOfOrder++
		return OutOfOrder
	}
}

// Verdict compares what a client got with what it should have got.
type Verdict struct {
	Expected, Unique, Missed, Extra, Dups, OutOfOrder int64
}

// verdict returns the client's counts against expected messages.
func (c *checker) verdict(expected int64) Verdict {
	v := Verdict{Expected: expected, Unique: c.Unique, Dups: c.Dups, OutOfOrder: c.OutOfOrder}
	if d := expected - c.Unique; d > 0 {
		v.Missed = d
	} else {
		v.Extra = -d
	}
	return v
}
