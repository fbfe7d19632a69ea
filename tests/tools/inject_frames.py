#!/usr/bin/env python3
"""Send N raw Ethernet frames out of a network interface (vmscope's e2e lab).

Sending on the host side of a TAP device hands each frame to the process that
holds the TAP (QEMU), so the guest *receives* them: the TAP's host-side
tx_packets/tx_bytes move, which vmscope reports as the VM's receive counters.

The frames carry ethertype 0x88B5 (IEEE 802 "local experimental"), a broadcast
destination and a locally administered source, and no IP payload, so nothing
on the host routes or answers them. Needs root (AF_PACKET).

usage: inject_frames.py IFACE COUNT SIZE
  SIZE is the whole frame in bytes (14-byte header included), 60..1514.
Prints the number of frames and bytes sent; exits 1 on any error.
"""

import socket
import sys

ETHERTYPE = 0x88B5
DST = b"\xff\xff\xff\xff\xff\xff"
SRC = b"\x02\x00\x00\x00\x88\xb5"


def main(argv):
    if len(argv) != 4:
        print("usage: inject_frames.py IFACE COUNT SIZE", file=sys.stderr)
        return 2
    iface, count, size = argv[1], int(argv[2]), int(argv[3])
    if not 60 <= size <= 1514:
        print(f"inject_frames: frame size {size} outside 60..1514", file=sys.stderr)
        return 2
    header = DST + SRC + ETHERTYPE.to_bytes(2, "big")
    sent_bytes = 0
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((iface, 0))
        for i in range(count):
            payload = i.to_bytes(4, "big") * ((size - len(header)) // 4 + 1)
            frame = header + payload[: size - len(header)]
            sent_bytes += sock.send(frame)
    print(f"sent {count} frames, {sent_bytes} bytes on {iface}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except (OSError, ValueError) as e:
        print(f"inject_frames: {e}", file=sys.stderr)
        sys.exit(1)
