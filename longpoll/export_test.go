package longpoll

// ParkedPolls counts the polls waiting parked, for tests.
func (t *Transport) ParkedPolls() int {
	return t.parked.Len()
}
