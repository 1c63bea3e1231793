package loadgen

import (
	"testing"
)

func TestCheckerFindsMissedDuplicatedAndOutOfOrder(t *testing.T) {
	var c checker
	// Publisher 1 on topic 0: 1 2 4 3 3 6 (5 missed, 3 late, 3 again).
	for _, s := range []int64{1, 2, 4, 3, 3, 6} {
		c.Observe(1, 0, s)
	}
	// Publisher 2 on topic 0 and publisher 1 on topic 1 are streams of
	// their own, with the same seqs: none is a duplicate.
	for _, s := range []int64{1, 2, 3} {
		if got := c.Observe(2, 0, s); got != InOrder {
			t.Errorf("publisher 2 seq %d: %v", s, got)
		}
		if got := c.Observe(1, 1, s); got != InOrder {
			t.Errorf("topic 1 seq %d: %v", s, got)
		}
	}
	v := c.verdict(6 + 3 + 3)
	want := Verdict{Expected: 12, Unique: 11, Missed: 1, Dups: 1, OutOfOrder: 1}
	if v != want {
		t.Errorf("verdict %+v, want %+v", v, want)
	}
}

func TestCheckerWindow(t *testing.T) {
	var c checker
	c.Observe(0, 0, 1)
	c.Observe(0, 0, 2)
	// Jump far ahead: old seqs are forgotten, and one arriving now counts as
	// new and late.
	c.Observe(0, 0, 1000)
	if got := c.Observe(0, 0, 2); got != OutOfOrder {
		t.Errorf("seq 2 after 1000: %v, want out of order", got)
	}
	// Within the window, a gap filled late is out of order once, then a
	// duplicate; slots reused across the window do not leak old bits.
	c.Observe(0, 0, 1000+seenWindow-1)
	if got := c.Observe(0, 0, 1000+seenWindow-2); got != OutOfOrder {
		t.Errorf("late fill: %v", got)
	}
	if got := c.Observe(0, 0, 1000+seenWindow-2); got != Duplicate {
		t.Errorf("second late fill: %v", got)
	}
	if got := c.Observe(0, 0, 1000+seenWindow); got != InOrder {
		t.Errorf("next: %v", got)
	}
	// 1000+seenWindow shares a slot with 1000; 1000+seenWindow+1 with
	// 1001, never seen: it must not look like a duplicate.
	if got := c.Observe(0, 0, 1000+2*seenWindow+1); got != InOrder {
		t.Errorf("far next: %v", got)
	}
	if got := c.Observe(0, 0, 1000+seenWindow+1); got != OutOfOrder {
		t.Errorf("late within the window: %v, want out of order", got)
	}
}

func TestCheckerExtra(t *testing.T) {
	var c checker
	for s := int64(1); s <= 5; s++ {
		c.Observe(0, 0, s)
	}
	if v := c.verdict(4); v.Extra != 1 || v.Missed != 0 {
		t.Errorf("verdict %+v, want one extra", v)
	}
}
