package sse

// SetShards runs t's parked deliveries on n deliverers, so that a test can
// put streams on one.
func SetShards(t *Transport, n int) { t.deliverers = newDeliverers(n) }

// SetAfterSessionEvent makes t call f once each stream's session event is
// flushed, before the stream goes on (parks, or reads): a test can act as a
// client that is quick to POST.
func SetAfterSessionEvent(t *Transport, f func()) { t.afterSessionEvent = f }
