package drop

import (
	"errors"
	"fmt"
	"testing"
)

func TestReasonOf(t *testing.T) {
	errICV := New(ICV, "esp: ICV mismatch")
	tests := []struct {
		err  error
		want Reason
	}{
		{nil, None},
		{errICV, ICV},
		{fmt.Errorf("wrapped: %w", errICV), ICV},
		{errors.New("plain"), Malformed},
	}
	for _, tc := range tests {
		if got := ReasonOf(tc.err); got != tc.want {
			t.Errorf("ReasonOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestNamesComplete(t *testing.T) {
	seen := map[string]bool{}
	for r := Reason(0); r < Count; r++ {
		n := r.String()
		if n == "" || seen[n] {
			t.Errorf("reason %d has empty or duplicate name %q", r, n)
		}
		seen[n] = true
	}
}
