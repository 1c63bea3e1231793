package topics

import "testing"

func BenchmarkRouterMatch(b *testing.B) {
	r := &Router[int]{}
	r.Add("phoenix", 0)
	r.Add("sala:lobby", 1)
	r.Add("sala:*", 2)
	r.Add("notificaciones:*", 3)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, ok := r.Match("notificaciones:42"); !ok {
			b.Fatal("no match")
		}
	}
}
