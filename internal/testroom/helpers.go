package testroom

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/sluicegw/sluice/gateway"
)

// UserToken signs a user token for id with secret, valid for an hour, as
// the transports' tests present it.
func UserToken(t testing.TB, secret, id string) string {
	t.Helper()
	tok, err := gateway.SignUserToken(secret, id, "", time.Hour)
	if err != nil {
		t.Fatalf("SignUserToken: %v", err)
	}
	return tok
}

// LogBuffer is a log sink that the server's goroutines may write to while a
// test reads it.
type LogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns everything written so far.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
