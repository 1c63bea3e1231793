package longpoll

import (
	"bytes"
	"net/http"
	"testing"
)

// A parked answer's serialized headers with Retry-After are those of the
// handler's map with Retry-After set, byte for byte, wherever it sorts.
func TestWriteHeaderRetryAfter(t *testing.T) {
	for _, keys := range [][]string{
		{"Cache-Control", "X-Accel-Buffering", "Access-Control-Allow-Origin"},
		{"Cache-Control"},
		{"X-Request-Id", "Vary"},
		{"Retry-After", "Cache-Control", "X-Request-Id"},
		{"Zzz"},
		{"Aaa"},
	} {
		h := http.Header{}
		for _, k := range keys {
			h.Set(k, "v-"+k)
		}
		hdr := serializeHeader(h.Clone())
		for _, retry := range []bool{false, true} {
			want := h.Clone()
			want.Set("Content-Type", jsonType)
			if retry {
				want.Set("Retry-After", "1")
			}
			var wb, got bytes.Buffer
			_ = want.Write(&wb)
			writeHeader(&got, hdr, retry)
			if !bytes.Equal(got.Bytes(), wb.Bytes()) {
				t.Errorf("keys %v, retry %v:\ngot  %q\nwant %q", keys, retry, got.Bytes(), wb.Bytes())
			}
		}
	}
}
