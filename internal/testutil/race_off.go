//go:build !race

// Package testutil holds small helpers shared by the project's tests.
package testutil

// RaceEnabled reports whether the binary was built with -race, under which
// sync.Pool drops items at random and allocation counts are meaningless.
const RaceEnabled = false
