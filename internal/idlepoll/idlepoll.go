// Package idlepoll waits for many idle connections to become readable on
// one goroutine per process (an epoll set, on Linux), so that a connection
// that waits holds no goroutine of its own: a goroutine is a 2 KiB stack and
// about 450 bytes of runtime state. The WebSocket transport parks idle
// connections in it, the LongPoll transport its waiting polls.
//
// Each registration is one-shot: a Waiter's function runs once after Arm,
// when its connection becomes readable (or the peer closes it), and the
// connection is armed again if it should be watched again. The runtime's
// poller keeps its own registration of the same file for the reads
// themselves.
package idlepoll

// Loop is the function of the goroutine that waits for parked connections
// to become readable (on Linux). It is started at first use and lives as
// long as the process, as the runtime's own poller: leak checks
// (goleak.IgnoreAnyFunction) may ignore it.
const Loop = "github.com/sluicegw/sluice/internal/idlepoll.(*Poller).loop"

// Waiter is one connection's registration. Embed it in what owns the
// connection (no allocation of its own); its zero value is not registered.
type Waiter struct {
	p     *Poller
	id    uint64
	armed bool
	fn    func()
}
