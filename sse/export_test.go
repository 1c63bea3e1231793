package sse

// SetShards runs t's parked deliveries on n deliverers, so that a test can
// put streams on one.
func SetShards(t *Transport, n int) { t.deliverers = newDeliverers(n) }
