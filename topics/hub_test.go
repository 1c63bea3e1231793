package topics

import "testing"

// woken reports whether l got a wake-up (and takes it).
func woken(l *Listener) bool {
	select {
	case <-l.C:
		return true
	default:
		return false
	}
}

// A topic's listeners are woken whether it has one (held inline) or
// several (in a map), and closing them in any order leaves the others.
func TestHubListenersOneAndMany(t *testing.T) {
	h := NewHub()
	a := h.Listen("t", "u")
	h.Wake("t")
	if !woken(a) {
		t.Fatal("the only listener of t was not woken")
	}
	b := h.Listen("t")
	c := h.Listen("t")
	if n := h.Listeners("t"); n != 3 {
		t.Fatalf("Listeners(t) = %d, want 3", n)
	}
	h.Wake("t")
	for name, l := range map[string]*Listener{"a": a, "b": b, "c": c} {
		if !woken(l) {
			t.Errorf("listener %s of three was not woken", name)
		}
	}
	a.Close()
	a.Close() // safe twice
	h.Wake("t")
	h.Wake("u")
	if woken(a) {
		t.Error("a closed listener was woken")
	}
	if !woken(b) || !woken(c) {
		t.Error("closing one listener of t stopped the others' wake-ups")
	}
	if h.Interested("u") {
		t.Error("u has no listener left but is still listened")
	}
	b.Close()
	c.Close()
	if h.Interested("t") || h.Listeners("t") != 0 {
		t.Errorf("t: %d listeners after all closed", h.Listeners("t"))
	}
	if len(h.listeners) != 0 {
		t.Errorf("the hub keeps %d topics without listeners", len(h.listeners))
	}
}

// Notify calls fn on wake-ups (and at once for one already pending), and
// the listener no longer keeps a channel.
func TestHubNotify(t *testing.T) {
	h := NewHub()
	l := h.Listen("t")
	h.Wake("t") // pending before Notify
	calls := 0
	l.Notify(func() { calls++ })
	if calls != 1 {
		t.Fatalf("a wake-up pending at Notify called fn %d times, want 1", calls)
	}
	if l.C != nil {
		t.Error("a Notify listener still holds its channel")
	}
	other := h.Listen("t")
	h.Wake("t")
	if w := woken(other); calls != 2 || !w {
		t.Errorf("after a wake-up of two listeners: fn called %d times (want 2), channel listener woken %v", calls, w)
	}
	l.Close()
	other.Close()
	h.Wake("t")
	if calls != 2 {
		t.Errorf("a closed Notify listener was called")
	}
}
