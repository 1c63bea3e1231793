package gateway

// Release stops the subscription's wake-ups and leaves its session's
// deadline as it is: for a parked long-poll that answered, whose session
// keeps what its start gave it (the window plus the session timeout), as a
// Poll's does. Close, by contrast, moves the deadline to the session
// timeout from now, one more store round trip, for a client that left.
func (sub *Subscription) Release() { sub.release() }
