package longpoll

// ParkedPolls counts the polls waiting parked, for tests.
func (t *Transport) ParkedPolls() int {
	t.parkedMu.Lock()
	defer t.parkedMu.Unlock()
	return len(t.parked)
}
