package daemon

import "testing"

func TestAutoProcs(t *testing.T) {
	for _, tc := range []struct{ cpus, want int }{
		{1, 1}, {2, 1}, {3, 0}, {4, 0}, {64, 0},
	} {
		if got := AutoProcs(tc.cpus); got != tc.want {
			t.Errorf("AutoProcs(%d) = %d, want %d", tc.cpus, got, tc.want)
		}
	}
}
