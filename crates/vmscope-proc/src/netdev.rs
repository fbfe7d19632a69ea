//! `/proc/net/dev` and `/proc/<pid>/net/dev`: per-interface counters.
//!
//! Emits one [`NetDevStats`] per interface line. The kernel prints the name
//! right-aligned and glued to `:` (`"  eth0:123 ..."`), and prints `rx_bytes`
//! with no separating space once it outgrows its column, so the line is split
//! at the first `:` (interface names cannot contain `:`). Header lines, lines
//! without 16 numeric columns, lines with an empty name and a last line
//! without a newline (cut by a short read) are skipped: this parser never fails. The counters are the host's view: on a
//! TAP, `rx` is what the guest sent.

use std::borrow::Cow;

/// Counters of one network interface, cumulative since it was created.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetDevStats<'a> {
    /// Borrowed from the input unless it is not UTF-8: `net/dev` lists
    /// every interface of the namespace (10 000 TAPs on a dense host), read
    /// on every tick.
    pub name: Cow<'a, str>,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_drops: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_drops: u64,
}

/// Columns the kernel has printed per interface since Linux 2.6.
const COLUMNS: usize = 16;

/// Parse every interface line; malformed lines are skipped.
pub fn parse_net_dev(buf: &[u8]) -> Vec<NetDevStats<'_>> {
    // A last line without '\n' may be cut by a short read: skipped.
    let (lines, _) = crate::error::complete_lines(buf);
    lines
        .split(|&b| b == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<NetDevStats<'_>> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii();
    if name.is_empty() || name.iter().any(|&b| b.is_ascii_whitespace() || b == b'|') {
        return None;
    }
    let mut v = [0u64; COLUMNS];
    let mut n = 0;
    for tok in line[colon + 1..]
        .split(u8::is_ascii_whitespace)
        .filter(|t| !t.is_empty())
    {
        if n == COLUMNS {
            break;
        }
        v[n] = crate::error::parse_u64(tok)?;
        n += 1;
    }
    if n < COLUMNS {
        return None;
    }
    Some(NetDevStats {
        name: String::from_utf8_lossy(name),
        rx_bytes: v[0],
        rx_packets: v[1],
        rx_errors: v[2],
        rx_drops: v[3],
        tx_bytes: v[8],
        tx_packets: v[9],
        tx_errors: v[10],
        tx_drops: v[11],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &[u8] = b"Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:   52044     612    0    0    0     0          0         0    52044     612    0    0    0     0       0          0
  eth0:123456789012345 98765432    1    2    0     0          0        17 987654321098  1234567    3    4    0     0       0          0
vnet12: 1000 10 0 5 0 0 0 0 2000 20 0 6 0 0 0 0
";

    #[test]
    fn real_file_with_glued_number() {
        let v = parse_net_dev(REAL);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name, "lo");
        assert_eq!(v[0].rx_bytes, 52044);
        assert_eq!(v[0].tx_packets, 612);
        assert_eq!(
            v[1],
            NetDevStats {
                name: "eth0".into(),
                rx_bytes: 123_456_789_012_345,
                rx_packets: 98_765_432,
                rx_errors: 1,
                rx_drops: 2,
                tx_bytes: 987_654_321_098,
                tx_packets: 1_234_567,
                tx_errors: 3,
                tx_drops: 4,
            }
        );
        assert_eq!(v[2].name, "vnet12");
        assert_eq!((v[2].rx_drops, v[2].tx_bytes, v[2].tx_drops), (5, 2000, 6));
    }

    #[test]
    fn malformed_lines_skipped() {
        let buf = b"  eth0: 1 2 3\n tap0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x\n: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n ok0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n";
        let v = parse_net_dev(buf);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "ok0");
        assert_eq!(v[0].tx_bytes, 9);
        assert!(parse_net_dev(b"").is_empty());
        // A read cut inside the last line drops only that line.
        let cut = &REAL[..REAL.len() - 10];
        assert_eq!(parse_net_dev(cut).len(), 2);
        assert_eq!(parse_net_dev(&REAL[..REAL.len() - 1]).len(), 2);
    }
}
