// Command mkman writes gosec.conf(5) from internal/conf's keyword tables
// to standard output (make man: dist/gosec.conf.5).
package main

import (
	"bufio"
	"os"

	"github.com/gosec-ipsec/gosec/internal/conf"
)

func main() {
	w := bufio.NewWriter(os.Stdout)
	conf.WriteManPage(w)
	if err := w.Flush(); err != nil {
		os.Exit(1)
	}
}
