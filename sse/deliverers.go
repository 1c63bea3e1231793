package sse

import "sync"

// deliverers run the deliveries of parked streams: a broadcast to 2,000
// streams of this instance is 2,000 deliveries, and a goroutine started
// for each (as parked streams did) cost its start, a stack grown again for
// every delivery (15 % of collect's time in the profile) and a scheduler
// queue 2,000 deep. Instead each stream belongs to one of a few shards,
// and a shard's deliveries run one after another on one goroutine, which
// is started when its queue stops being empty and ends when it empties
// again (so no goroutine waits while the instance is idle).
//
// A delivery never waits on a client: parked streams write without
// blocking and leave what the client's socket did not take to a goroutine
// of their own (parked.writeBehind). It can wait on a store, as each
// stream's task did: there are more shards than the Redis client has
// connections (10 per CPU), so that deliveries waiting on Redis keep all of
// them busy, as a goroutine per delivery did, and one slow read holds up a
// small part of the streams only.
type deliverers struct {
	shards []deliverer
}

// deliverer is one shard's queue of streams to deliver.
type deliverer struct {
	mu      sync.Mutex
	queue   []*parked
	running bool
	// spare is the array the last run worked on, kept for the next run's
	// first swap (else its first wake-up grows the queue from nothing).
	spare []*parked
}

// shardsPerCPU is how many shards per GOMAXPROCS.
const shardsPerCPU = 16

func newDeliverers(n int) *deliverers {
	return &deliverers{shards: make([]deliverer, max(n, 1))}
}

// add queues p's delivery on its shard, starting the shard's goroutine if
// it is not running. It does not block: wake-ups call it with the broker's
// hub locked.
func (ds *deliverers) add(p *parked) {
	d := &ds.shards[p.shard%uint32(len(ds.shards))]
	d.mu.Lock()
	d.queue = append(d.queue, p)
	start := !d.running
	d.running = true
	d.mu.Unlock()
	if start {
		go d.run()
	}
}

// run delivers the queued streams, in the order they were woken, until the
// queue is empty.
func (d *deliverer) run() {
	d.mu.Lock()
	batch := d.spare
	d.spare = nil
	d.mu.Unlock()
	for {
		d.mu.Lock()
		if len(d.queue) == 0 {
			d.running = false
			d.spare = batch[:0]
			d.mu.Unlock()
			return
		}
		// Swap the queue with the last batch's (emptied) array: wake-ups
		// go on filling the one while this goroutine works on the other.
		batch, d.queue = d.queue, batch[:0]
		d.mu.Unlock()
		for i, p := range batch {
			p.deliver()
			batch[i] = nil
		}
	}
}
