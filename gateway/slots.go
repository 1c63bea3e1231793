package gateway

import (
	"iter"
	"slices"
)

// sortedSlots iterates a cursor's slots in ascending order, so that tokens
// are deterministic.
func sortedSlots(m map[int]uint64) iter.Seq2[int, uint64] {
	return func(yield func(int, uint64) bool) {
		if len(m) == 1 { // the common case: one channel, nothing to sort
			for k, v := range m {
				yield(k, v)
			}
			return
		}
		var buf [8]int
		keys := buf[:0]
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			if !yield(k, m[k]) {
				return
			}
		}
	}
}
