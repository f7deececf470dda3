// Command kpctl runs shell commands in the kernel-peer guest over its
// control channel:
//
//	go run ./test/kernelpeer/kpctl SOCKET 'cmd1' ['cmd2' ...]
//
// It prints each command's output and exits with the last non-zero status.
// test/kernelpeer/kpeer.sh ctl wraps it.
package main

import (
	"fmt"
	"os"

	"github.com/gosec-ipsec/gosec/test/kernelpeer"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: kpctl SOCKET CMD [CMD...]")
		os.Exit(2)
	}
	c, err := kernelpeer.DialCtl(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer c.Close()
	status := 0
	for _, cmd := range os.Args[2:] {
		rc, out, err := c.Run(cmd)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if out != "" {
			fmt.Println(out)
		}
		if rc != 0 {
			fmt.Fprintf(os.Stderr, "[rc=%d] %s\n", rc, cmd)
			status = rc
		}
	}
	os.Exit(status)
}
