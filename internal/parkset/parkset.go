// Package parkset holds what a transport parked (requests served without a
// goroutine of their own), so that a drain or a close can reach each of
// them. The long-poll and SSE transports share it.
package parkset

import "sync"

// Set is a set of parked things, safe for concurrent use. The zero value is
// an empty set, ready to use.
type Set[T comparable] struct {
	mu sync.Mutex
	m  map[T]struct{}
}

// Add puts v in the set.
func (s *Set[T]) Add(v T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[T]struct{})
	}
	s.m[v] = struct{}{}
}

// Remove takes v out of the set, if it is there.
func (s *Set[T]) Remove(v T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, v)
}

// Len returns how many things the set holds.
func (s *Set[T]) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Snapshot returns what the set holds now, in no order. The caller acts on
// each without holding the set, so that what it does may Remove them.
func (s *Set[T]) Snapshot() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	all := make([]T, 0, len(s.m))
	for v := range s.m {
		all = append(all, v)
	}
	return all
}
