package netio

import (
	"encoding/binary"
	"fmt"
	"runtime"

	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftElemGetter reads single elements of a set (NFT_MSG_GETSETELEM
// without NLM_F_DUMP, as `nft get element`), which google/nftables does
// not offer: the Filter banks the counters of the few elements a change
// concerns without listing the whole set.
type nftElemGetter struct {
	nl *mdnetlink.Conn
}

// newNftElemGetter opens its netlink socket in the calling thread's
// namespace (see nshere.go).
func newNftElemGetter() (*nftElemGetter, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	nl, err := mdnetlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return nil, fmt.Errorf("netio: nftables get socket: %w", err)
	}
	return &nftElemGetter{nl: nl}, nil
}

func (g *nftElemGetter) Close() error { return g.nl.Close() }

// maxGetElems bounds the elements asked for in one request; more are
// read with a listing of the set.
const maxGetElems = 256

// counters returns the packet counters of the elements of interval set
// table/set (family inet, 4-octet keys) that start at los.
func (g *nftElemGetter) counters(table, set string, los []uint32) (map[uint32]uint64, error) {
	if len(los) > maxGetElems {
		return nil, fmt.Errorf("netio: %d elements to get, more than %d", len(los), maxGetElems)
	}
	ae := mdnetlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, table)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(list *mdnetlink.AttributeEncoder) error {
		for _, lo := range los {
			list.Nested(unix.NFTA_LIST_ELEM, func(elem *mdnetlink.AttributeEncoder) error {
				elem.Nested(unix.NFTA_SET_ELEM_KEY, func(key *mdnetlink.AttributeEncoder) error {
					key.Bytes(unix.NFTA_DATA_VALUE, binary.BigEndian.AppendUint32(nil, lo))
					return nil
				})
				return nil
			})
		}
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return nil, err
	}
	req := mdnetlink.Message{
		Header: mdnetlink.Header{
			Type:  mdnetlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: mdnetlink.Request | mdnetlink.Acknowledge,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	}
	sent, err := g.nl.Send(req)
	if err != nil {
		return nil, fmt.Errorf("netio: get set elements: %w", err)
	}
	out := make(map[uint32]uint64, len(los))
	for {
		msgs, err := g.nl.Receive()
		if err != nil {
			return nil, fmt.Errorf("netio: get set elements: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Sequence != sent.Header.Sequence {
				continue
			}
			if m.Header.Type == mdnetlink.Error {
				// The acknowledgement (an error is returned by Receive).
				if len(out) != len(los) {
					return nil, fmt.Errorf("netio: get set elements: %d of %d answered", len(out), len(los))
				}
				return out, nil
			}
			if len(m.Data) < 4 {
				continue
			}
			if err := decodeElemCounters(m.Data[4:], out); err != nil {
				return nil, err
			}
		}
	}
}

// decodeElemCounters reads a NEWSETELEM message's elements: key and
// counter packets.
func decodeElemCounters(b []byte, out map[uint32]uint64) error {
	ad, err := mdnetlink.NewAttributeDecoder(b)
	if err != nil {
		return err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *mdnetlink.AttributeDecoder) error {
			for list.Next() {
				list.Nested(func(elem *mdnetlink.AttributeDecoder) error {
					var key []byte
					var packets uint64
					var end bool
					for elem.Next() {
						switch elem.Type() {
						case unix.NFTA_SET_ELEM_KEY:
							elem.Nested(func(k *mdnetlink.AttributeDecoder) error {
								for k.Next() {
									if k.Type() == unix.NFTA_DATA_VALUE {
										key = k.Bytes()
									}
								}
								return nil
							})
						case unix.NFTA_SET_ELEM_FLAGS:
							end = elem.Uint32()&unix.NFT_SET_ELEM_INTERVAL_END != 0
						case unix.NFTA_SET_ELEM_EXPR:
							elem.Nested(func(e *mdnetlink.AttributeDecoder) error {
								packets = counterPackets(e)
								return nil
							})
						case nftaSetElemExpressions:
							elem.Nested(func(es *mdnetlink.AttributeDecoder) error {
								for es.Next() {
									es.Nested(func(e *mdnetlink.AttributeDecoder) error {
										packets += counterPackets(e)
										return nil
									})
								}
								return nil
							})
						}
					}
					if len(key) == 4 && !end {
						out[binary.BigEndian.Uint32(key)] = packets
					}
					return nil
				})
			}
			return nil
		})
	}
	if err := ad.Err(); err != nil {
		return fmt.Errorf("netio: get set elements: %w", err)
	}
	return nil
}

// counterPackets reads the packets of a counter expression (0 for any
// other expression).
func counterPackets(e *mdnetlink.AttributeDecoder) uint64 {
	var name string
	var packets uint64
	for e.Next() {
		switch e.Type() {
		case unix.NFTA_EXPR_NAME:
			name = e.String()
		case unix.NFTA_EXPR_DATA:
			e.Nested(func(d *mdnetlink.AttributeDecoder) error {
				for d.Next() {
					if d.Type() == unix.NFTA_COUNTER_PACKETS {
						packets = d.Uint64()
					}
				}
				return nil
			})
		}
	}
	if name != "counter" {
		return 0
	}
	return packets
}

// nftaSetElemExpressions is NFTA_SET_ELEM_EXPRESSIONS (linux
// nf_tables.h), which x/sys/unix lacks: an element's expressions when it
// has more than one.
const nftaSetElemExpressions = 11
