package handback

import (
	"errors"
	"io"
	"net"
	"testing"
)

// A connection given back is accepted again, its early bytes read first;
// once the listener is closed, Accept fails and connections given back are
// closed.
func TestReturn(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Wrap(inner)
	client, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.Write([]byte("llo")); err != nil {
		t.Fatal(err)
	}
	given := make(chan bool, 1)
	go func() { given <- l.Return(conn, []byte("he")) }()
	back, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	if !<-given {
		t.Fatal("Return reported the connection not given back")
	}
	b := make([]byte, 5)
	if _, err := io.ReadFull(back, b); err != nil || string(b) != "hello" {
		t.Fatalf("want the early bytes then the connection's: got %q, %v", b, err)
	}

	// Given back again, it is not wrapped again.
	go func() { given <- l.Return(back, []byte("again")) }()
	again, err := l.Accept()
	if err != nil || !<-given {
		t.Fatal("the connection was not given back a second time", err)
	}
	if again != back {
		t.Fatalf("a connection given back twice was wrapped twice")
	}
	if _, err := io.ReadFull(again, b); err != nil || string(b) != "again" {
		t.Fatalf("want the second early bytes: got %q, %v", b, err)
	}

	// Given back with nothing left to read first, it is the plain
	// connection again.
	go func() { given <- l.Return(again, nil) }()
	plain, err := l.Accept()
	if err != nil || !<-given {
		t.Fatal("the connection was not given back a third time", err)
	}
	if plain != conn {
		t.Fatalf("a connection given back with nothing to read first: want the plain connection, got %T", plain)
	}

	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: want net.ErrClosed, got %v", err)
	}
	if l.Return(plain, nil) {
		t.Fatal("Return after Close: want the connection closed, not given back")
	}
	if _, err := client.Read(b); err != io.EOF {
		t.Fatalf("the client of a connection given back after Close: want EOF, got %v", err)
	}
}
