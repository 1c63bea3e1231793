package parkset

import (
	"slices"
	"testing"
)

// TestSet: what was added and not removed is in a snapshot, once; a
// snapshot stays as it was when the set changes after it.
func TestSet(t *testing.T) {
	var s Set[int]
	if got := s.Snapshot(); len(got) != 0 || s.Len() != 0 {
		t.Fatalf("zero Set holds %v (Len %d), want nothing", got, s.Len())
	}
	s.Remove(7) // not there: nothing happens
	for _, v := range []int{1, 2, 3, 2} {
		s.Add(v)
	}
	s.Remove(1)
	got := s.Snapshot()
	slices.Sort(got)
	if !slices.Equal(got, []int{2, 3}) || s.Len() != 2 {
		t.Fatalf("Snapshot = %v (Len %d), want [2 3]", got, s.Len())
	}
	for _, v := range got {
		s.Remove(v)
	}
	if s.Len() != 0 || len(got) != 2 {
		t.Fatalf("after removing all: Len %d, snapshot %v; want 0 and the snapshot unchanged", s.Len(), got)
	}
}
