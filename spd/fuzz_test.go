package spd

import (
	"net/netip"
	"sync"
	"testing"
)

// fuzzPolicy decodes 9 bytes into a policy over the 10.0.0.0/16 space,
// so that fuzzer-chosen policies overlap often.
func fuzzPolicy(b []byte) *Policy {
	pf := func(x, y, bits byte) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, x & 3, y & 7}), int(bits%33)).Masked()
	}
	ports := func(x byte) PortRange {
		if x&0x80 != 0 {
			return AnyPort
		}
		lo := uint16(x & 7)
		return PortRange{lo, lo + uint16(x>>3&3)}
	}
	p := &Policy{
		Dir:      Direction(b[0] % 3),
		Action:   Action(b[0] >> 2 % 3),
		Priority: uint32(b[0] >> 4 & 3),
		ReqID:    uint32(b[1]&3) + 1,
		Sel: Selector{
			Local:       pf(b[2], b[3], b[4]),
			Remote:      pf(b[2]>>4, b[5], b[6]),
			Proto:       []uint8{0, 1, 6, 17}[b[1]>>2&3],
			LocalPorts:  ports(b[7]),
			RemotePorts: ports(b[8]),
		},
	}
	return p
}

func fuzzTuple(b []byte) (Direction, Tuple) {
	a := func(x, y byte) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, x & 3, y & 7}) }
	return Direction(b[0] % 3), Tuple{Src: a(b[1], b[2]), Dst: a(b[1]>>4, b[3]),
		Proto: []uint8{1, 6, 17, 47}[b[0]>>2&3], SrcPort: uint16(b[4] & 7), DstPort: uint16(b[4] >> 3 & 7)}
}

// FuzzLookupBytes builds a DB from fuzzer-chosen policies (with some
// deleted again), then compares the index with the linear scan on
// fuzzer-chosen tuples.
func FuzzLookupBytes(f *testing.F) {
	f.Add([]byte{3, 0, 0, 0, 0, 1, 1, 1, 24, 0, 24, 0x80, 0x80, 0, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{2, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 1 {
			return
		}
		n := int(b[0] % 32)
		b = b[1:]
		db := New()
		var all []*Policy
		for i := 0; i < n && len(b) >= 10; i++ {
			p := fuzzPolicy(b)
			del := b[9]&0x40 != 0
			b = b[10:]
			if _, err := db.Add(p); err != nil {
				t.Fatalf("valid policy refused: %v", err)
			}
			if del && len(all) > 0 {
				k := int(p.Priority) % len(all)
				if !db.Delete(all[k].ID) {
					t.Fatal("Delete of a present policy failed")
				}
				all = append(all[:k], all[k+1:]...)
			}
			all = append(all, p)
		}
		for len(b) >= 5 {
			d, tu := fuzzTuple(b)
			b = b[5:]
			if got, want := db.Lookup(d, tu), linear(all, d, tu); got != want {
				t.Fatalf("%v %+v: index %+v, linear %+v", d, tu, got, want)
			}
		}
	})
}

// TestLookupDuringChurn: a policy that is never touched must be found by
// every concurrent lookup while other policies come and go.
func TestLookupDuringChurn(t *testing.T) {
	db := New()
	stable := pol("stable", Out, "172.16.0.0/24", "172.17.0.0/24", Protect)
	if _, err := db.Add(stable); err != nil {
		t.Fatal(err)
	}
	tu := Tuple{Src: addr("172.16.0.1"), Dst: addr("172.17.0.1"), Proto: 6, SrcPort: 1, DstPort: 2}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan string, 2)
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got := db.Lookup(Out, tu); got != stable {
					errs <- name(got)
					return
				}
			}
		}()
	}
	var ids []uint64
	for i := 0; i < 2000; i++ {
		// Wider policies around the stable one, and others elsewhere.
		p := pol("churn", Out, "172.16.0.0/16", "172.17.0.0/16", Protect)
		if i%2 == 0 {
			p.Sel.Remote = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		}
		id, err := db.Add(p)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		if i%3 == 0 {
			db.Delete(ids[0])
			ids = ids[1:]
		}
		if i%500 == 0 {
			db.DeleteConn("churn")
			ids = nil
		}
	}
	close(stop)
	wg.Wait()
	select {
	case got := <-errs:
		t.Fatalf("a concurrent lookup returned %s", got)
	default:
	}
}

// BenchmarkCheckInbound: the post-decapsulation check among 10,000 In
// policies (the site-to-site set turned around).
func BenchmarkCheckInbound(b *testing.B) {
	db := New()
	var last *Policy
	for _, p := range sitePolicies(10000) {
		p.Dir = In
		if _, err := db.Add(p); err != nil {
			b.Fatal(err)
		}
		last = p
	}
	tu := Tuple{Src: last.Sel.Remote.Addr().Next(), Dst: last.Sel.Local.Addr().Next(), Proto: 17, SrcPort: 9, DstPort: 9}
	if last.Sel.Remote.Bits() == 32 {
		tu.Src = last.Sel.Remote.Addr()
	}
	if !db.CheckInbound(last.ReqID, tu) {
		b.Fatal("benchmark tuple is rejected")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		db.CheckInbound(last.ReqID, tu)
	}
}

// BenchmarkLookupMiss: a packet no policy selects, among 10,000.
func BenchmarkLookupMiss(b *testing.B) {
	db := New()
	for _, p := range sitePolicies(10000) {
		db.Add(p)
	}
	tu := Tuple{Src: addr("192.168.1.1"), Dst: addr("10.200.0.1"), Proto: 6}
	if db.Lookup(Out, tu) != nil {
		b.Fatal("benchmark tuple matches")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		db.Lookup(Out, tu)
	}
}

// BenchmarkAddDelete: the writer's cost of one change in a DB of 10,000.
func BenchmarkAddDelete(b *testing.B) {
	db := New()
	for _, p := range sitePolicies(10000) {
		db.Add(p)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p := pol("x", Out, "172.30.0.0/24", "10.250.0.0/24", Protect)
		id, err := db.Add(p)
		if err != nil {
			b.Fatal(err)
		}
		db.Delete(id)
	}
}
