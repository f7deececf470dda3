// Command espflood sends forged ESP packets at a gateway as fast as it can
// (or at a given rate), for the flood test of issue 12 (scripts/bench-flood.sh).
//
//	espflood -dst 192.0.2.2 -mode unknown-spi [-pps 100000] [-d 10s]
//	espflood -dst 192.0.2.2 -mode bad-icv -spi 00002001 [-seq 0x80000000]
//
// Modes:
//
//	unknown-spi  every packet carries a different SPI from -spi upwards
//	             (default 0xf1000000), which the gateway has no SA for
//	bad-icv      every packet carries -spi, the SPI of one of the gateway's
//	             inbound SAs, and sequence numbers from -seq upwards (ahead
//	             of the SA's replay window, so the replay check passes and
//	             the gateway has to check the ICV), with random bytes where
//	             IV, ciphertext and ICV belong: the ICV check fails
//
// Packets go out of a raw IPv4 socket for protocol 50 (the kernel builds
// the IP header and runs its IP output path for each) in sendmmsg batches
// of -batch, or, with -dev and -dstmac, as whole prebuilt Ethernet frames
// through an AF_PACKET socket on that interface with the qdisc bypassed
// (PACKET_QDISC_BYPASS), as a packet generator (trafgen, pktgen) sends:
// no route lookup, netfilter or neighbour per packet. On a machine the
// flooder shares with what it floods, making the flood then takes less of
// the shared cores, and the gateway's share of the cost shows more
// clearly. -src is then the IPv4 source (default: the interface's first
// address). -size is the number of ESP
// bytes after SPI and sequence number; the default 124 is valid for every
// suite's block and ICV sizes (GCM/ChaCha20: 8 IV + 100 + 16 ICV; CBC with
// HMAC-SHA1-96: 16 IV + 96 + 12 ICV), so the packet gets as far as the ICV
// check. With -pps 0 there is no pacing. At the end espflood prints one
// JSON object: packets sent, send errors, seconds and the rate reached.
//
// Root only (raw socket). Send only to addresses of namespaces you made.
package main

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
)

// Mode is what kind of forged packet is sent.
type Mode string

// The modes.
const (
	UnknownSPI Mode = "unknown-spi"
	BadICV     Mode = "bad-icv"
)

// Config is one flood.
type Config struct {
	Dst      netip.Addr
	Src      netip.Addr // local address to bind; zero: the route's
	Dev      string     // with DstMAC: send Ethernet frames on this interface
	DstMAC   net.HardwareAddr
	Mode     Mode
	SPI      uint32 // first SPI (unknown-spi) or the SA's SPI (bad-icv)
	Seq      uint32 // first sequence number
	Size     int    // ESP bytes after SPI and sequence number
	Batch    int    // packets per sendmmsg
	PPS      int    // target packets per second; 0: as fast as possible
	Duration time.Duration
}

// Result is what a flood did.
type Result struct {
	Mode      Mode    `json:"mode"`
	Dst       string  `json:"dst"`
	SPI       string  `json:"spi"`
	Size      int     `json:"esp_bytes"`
	TargetPPS int     `json:"target_pps"`
	Sent      uint64  `json:"sent"`
	Errors    uint64  `json:"send_errors"`
	Seconds   float64 `json:"seconds"`
	PPS       float64 `json:"pps"`
	// CPUSeconds is the flooder's own user+system time (getrusage), so a
	// benchmark on a shared machine can say what the flood cost to make.
	CPUSeconds float64 `json:"cpu_seconds"`
}

func main() {
	var (
		cfg          Config
		dst, src     string
		mode         string
		dstMAC       string
		spi, seq     uint64
		flagsFailure = func(format string, a ...any) {
			fmt.Fprintf(os.Stderr, "espflood: "+format+"\n", a...)
			os.Exit(2)
		}
	)
	flag.StringVar(&dst, "dst", "", "gateway address to flood (required)")
	flag.StringVar(&src, "src", "", "local source address (default: the route's)")
	flag.StringVar(&mode, "mode", string(UnknownSPI), "unknown-spi or bad-icv")
	flag.StringVar(&cfg.Dev, "dev", "", "send whole Ethernet frames through AF_PACKET on this interface (with -dstmac)")
	flag.StringVar(&dstMAC, "dstmac", "", "destination MAC address of the frames (with -dev)")
	flag.Func("spi", "SPI in hex, with or without 0x, as gosec status prints it: the first one (unknown-spi, default f1000000) or the inbound SA's (bad-icv, required)", func(v string) (err error) {
		spi, err = parseSPI(v)
		return err
	})
	flag.Uint64Var(&seq, "seq", 0x80000000, "first sequence number")
	flag.IntVar(&cfg.Size, "size", 124, "ESP bytes after SPI and sequence number")
	flag.IntVar(&cfg.Batch, "batch", 64, "packets per sendmmsg")
	flag.IntVar(&cfg.PPS, "pps", 0, "target packets per second (0: as fast as possible)")
	flag.DurationVar(&cfg.Duration, "d", 10*time.Second, "how long to flood")
	flag.Parse()

	var err error
	if cfg.Dst, err = netip.ParseAddr(dst); err != nil || !cfg.Dst.Is4() {
		flagsFailure("-dst: want an IPv4 address, got %q", dst)
	}
	if src != "" {
		if cfg.Src, err = netip.ParseAddr(src); err != nil || !cfg.Src.Is4() {
			flagsFailure("-src: want an IPv4 address, got %q", src)
		}
	}
	if (cfg.Dev == "") != (dstMAC == "") {
		flagsFailure("-dev and -dstmac go together")
	}
	if dstMAC != "" {
		if cfg.DstMAC, err = net.ParseMAC(dstMAC); err != nil || len(cfg.DstMAC) != 6 {
			flagsFailure("-dstmac: want an Ethernet address, got %q", dstMAC)
		}
	}
	cfg.Mode = Mode(mode)
	switch cfg.Mode {
	case UnknownSPI:
		if spi == 0 {
			spi = 0xf1000000
		}
	case BadICV:
		if spi == 0 {
			flagsFailure("-mode bad-icv needs -spi (the gateway's inbound SA)")
		}
	default:
		flagsFailure("-mode: want unknown-spi or bad-icv, got %q", mode)
	}
	if spi < 256 || spi > 0xffffffff || seq == 0 || seq > 0xffffffff {
		flagsFailure("-spi must be 256..0xffffffff and -seq 1..0xffffffff")
	}
	cfg.SPI, cfg.Seq = uint32(spi), uint32(seq)
	if cfg.Size < 16 || cfg.Size > 1400 || cfg.Batch < 1 || cfg.Batch > 1024 || cfg.PPS < 0 || cfg.Duration <= 0 {
		flagsFailure("-size 16..1400, -batch 1..1024, -pps >= 0, -d > 0")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := Flood(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "espflood:", err)
		os.Exit(1)
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintln(os.Stderr, "espflood:", err)
		os.Exit(1)
	}
}

// parseSPI reads an SPI written in hex, with or without 0x.
func parseSPI(v string) (uint64, error) {
	h := strings.TrimPrefix(strings.ToLower(v), "0x")
	n, err := strconv.ParseUint(h, 16, 32)
	if err != nil || h == "" {
		return 0, fmt.Errorf("want a 32-bit hex number, got %q", v)
	}
	return n, nil
}

// batch is a set of prebuilt ESP packets sent with one sendmmsg. bufs
// are the ESP packets (SPI onwards); with AF_PACKET each lies at the end
// of its frame, behind the Ethernet and IPv4 headers.
type batch struct {
	bufs [][]byte
}

// newBatch builds n packets of 8+size ESP bytes with random bytes after
// the ESP header, each behind head bytes of room for the headers in front.
func newBatch(n, size, head int) (*batch, [][]byte, error) {
	b := &batch{bufs: make([][]byte, n)}
	whole := make([][]byte, n)
	for i := range b.bufs {
		whole[i] = make([]byte, head+8+size)
		b.bufs[i] = whole[i][head:]
		if _, err := rand.Read(b.bufs[i][8:]); err != nil {
			return nil, nil, fmt.Errorf("random payload: %w", err)
		}
	}
	return b, whole, nil
}

// fill writes the SPI and sequence number of packets k, k+1, ... of the
// flood into the batch.
func (b *batch) fill(mode Mode, spi, seq uint32, k uint64) {
	for i, buf := range b.bufs {
		n := uint32(k) + uint32(i)
		if mode == UnknownSPI {
			binary.BigEndian.PutUint32(buf[0:], spi+n)
		} else {
			binary.BigEndian.PutUint32(buf[0:], spi)
		}
		s := seq + n
		if s == 0 { // 0 is never a valid ESP sequence number
			s = 1
		}
		binary.BigEndian.PutUint32(buf[4:], s)
	}
}

// Flood sends forged packets as cfg says until cfg.Duration has passed or
// ctx is done.
func Flood(ctx context.Context, cfg Config) (Result, error) {
	res := Result{Mode: cfg.Mode, Dst: cfg.Dst.String(), SPI: fmt.Sprintf("%#x", cfg.SPI), Size: cfg.Size, TargetPPS: cfg.PPS}
	send, closeSender, b, err := openSender(cfg)
	if err != nil {
		return res, err
	}
	defer closeSender()
	start := time.Now()
	end := start.Add(cfg.Duration)
	var k uint64
	for ctx.Err() == nil {
		now := time.Now()
		if !now.Before(end) {
			break
		}
		if cfg.PPS > 0 {
			// pace per batch: packet k is due at start + k/PPS
			due := start.Add(time.Duration(float64(k) / float64(cfg.PPS) * float64(time.Second)))
			if d := due.Sub(now); d > 0 {
				time.Sleep(d)
				continue
			}
		}
		b.fill(cfg.Mode, cfg.SPI, cfg.Seq, k)
		n, err := send()
		if n > 0 {
			res.Sent += uint64(n)
			k += uint64(n)
		}
		if err != nil {
			if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
				return res, fmt.Errorf("send: %w", err)
			}
			// ENOBUFS and the like: count the batch's unsent rest, go on
			res.Errors += uint64(len(b.bufs) - n)
			k += uint64(len(b.bufs) - n)
		}
	}
	res.Seconds = time.Since(start).Seconds()
	if res.Seconds > 0 {
		res.PPS = float64(res.Sent) / res.Seconds
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		res.CPUSeconds = float64(ru.Utime.Nano()+ru.Stime.Nano()) / 1e9
	}
	return res, nil
}

// openSender opens the socket cfg asks for and builds its batch: send
// sends the whole batch once and returns how many packets went out.
func openSender(cfg Config) (send func() (int, error), closeSender func() error, b *batch, err error) {
	if cfg.Dev != "" {
		return openPacketSender(cfg)
	}
	laddr := "0.0.0.0"
	if cfg.Src.IsValid() {
		laddr = cfg.Src.String()
	}
	c, err := net.ListenPacket("ip4:50", laddr)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("raw ESP socket: %w", err)
	}
	if ic, ok := c.(*net.IPConn); ok {
		_ = ic.SetWriteBuffer(4 << 20)
		_ = ic.SetReadBuffer(4096) // nothing is read; keep the queue small
	}
	b, pkts, err := newBatch(cfg.Batch, cfg.Size, 0)
	if err != nil {
		c.Close()
		return nil, nil, nil, err
	}
	dst := &net.IPAddr{IP: net.IP(cfg.Dst.AsSlice())}
	msgs := make([]ipv4.Message, len(pkts))
	for i, p := range pkts {
		msgs[i] = ipv4.Message{Buffers: [][]byte{p}, Addr: dst}
	}
	pc := ipv4.NewPacketConn(c)
	return func() (int, error) { return pc.WriteBatch(msgs, 0) }, c.Close, b, nil
}
