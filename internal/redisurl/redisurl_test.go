package redisurl

import (
	"strings"
	"testing"
)

func TestParseSaysWhatARedisURLIsAndHidesPasswords(t *testing.T) {
	for _, ok := range []string{"redis://127.0.0.1:6379/0", "rediss://u:pw@example.com:6380/2", "unix:///run/redis.sock"} {
		if _, err := Parse(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, tc := range []struct{ url, want string }{
		{"localhost:6379", `starts with redis:// or rediss:// (redis://localhost:6379)`},
		{"127.0.0.1:6379", "starts with redis://"},
		{"u:SuperSecretPw@127.0.0.1:6379", "starts with redis://"},
		{"http://u:SuperSecretPw@127.0.0.1:6379", `has scheme "http"`},
		{"//u:SuperSecretPw@127.0.0.1:6379", "has no scheme"},
		{"redis://u:SuperSecretPw@127.0.0.1:notaport/5", "does not parse"},
		{"redis://u:SuperSecretPw@[::1/5", "does not parse"},
		{"", "empty Redis URL"},
	} {
		_, err := Parse(tc.url)
		if err == nil {
			t.Errorf("%q accepted", tc.url)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v; want it to say %q", tc.url, err, tc.want)
		}
		if strings.Contains(err.Error(), "SuperSecretPw") {
			t.Errorf("%q: the error shows the password: %v", tc.url, err)
		}
	}
}
