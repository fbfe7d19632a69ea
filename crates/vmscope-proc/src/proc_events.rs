//! Datagrams from the kernel's process-events connector (netlink).
//!
//! Reads: the bytes of one datagram received on a `NETLINK_CONNECTOR` socket
//! subscribed to `CN_IDX_PROC` (see `linux/cn_proc.h` and
//! `linux/connector.h`): one or more netlink messages (`nlmsghdr`), each
//! carrying a `cn_msg` whose payload is a `proc_event`, or a netlink error or
//! overrun notice. The connector sends its messages with type `NLMSG_DONE`;
//! that type carries data here and does not end the datagram.
//!
//! Emits: [`ProcEvent`]s in datagram order: fork, exec and exit with the
//! kernel's pid and tgid (the caller decides what threads mean to it), the
//! acknowledgement of a subscription, netlink errors and overruns; every
//! other event kind (uid, gid, sid, comm, ptrace, coredump) is [`ProcEvent::Other`].
//! Also builds the subscription message ([`subscribe_message`]).
//!
//! Fails: a message whose header or payload is cut short, or whose length is
//! below a header's, ends the parse with a [`ParseError`]; the events parsed
//! before it are kept (they were whole). Never panics on any input. Integers
//! are in the host's byte order, as the kernel writes them.

use crate::error::{FileKind, ParseError};

const KIND: FileKind = FileKind::ProcEvents;

/// `CN_IDX_PROC` / `CN_VAL_PROC`: the connector id of process events.
pub const CN_IDX_PROC: u32 = 1;
pub const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN` / `PROC_CN_MCAST_IGNORE`: the subscription ops.
pub const PROC_CN_MCAST_LISTEN: u32 = 1;
pub const PROC_CN_MCAST_IGNORE: u32 = 2;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// `struct cn_msg` without its payload.
const CN_MSG_LEN: usize = 20;
/// `struct proc_event` up to its `event_data` union.
const PROC_EVENT_HDRLEN: usize = 16;

const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 1;
const PROC_EVENT_EXEC: u32 = 2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// Length of the message [`subscribe_message`] builds.
pub const SUBSCRIBE_MESSAGE_LEN: usize = NLMSG_HDRLEN + CN_MSG_LEN + 4;

/// One thing the process-events connector said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    /// A task was created: a process when `child_pid == child_tgid`, else a
    /// thread of `child_tgid`.
    Fork {
        parent_pid: u32,
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    /// A task called exec (after it, `pid == tgid` for a whole process).
    Exec { pid: u32, tgid: u32 },
    /// A task exited: the process is gone when `pid == tgid` (its leader).
    Exit { pid: u32, tgid: u32 },
    /// The answer to a subscription: `err` 0 is success, else an errno
    /// (`EPERM` without `CAP_NET_ADMIN` in the initial user namespace).
    Ack { err: u32 },
    /// A netlink error message (`NLMSG_ERROR` with a non-zero errno, given
    /// here as a positive number).
    NetlinkError { errno: i32 },
    /// `NLMSG_OVERRUN`: the kernel says messages were lost.
    Overrun,
    /// Another event kind, or a connector message for another index.
    Other,
}

/// Appends the events of one datagram to `out`, in order. On malformed
/// input, the events before the bad message stay in `out` and the error
/// says what was cut or wrong.
pub fn parse_proc_events(buf: &[u8], out: &mut Vec<ProcEvent>) -> Result<(), ParseError> {
    if buf.is_empty() {
        return Err(ParseError::Empty { kind: KIND });
    }
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < NLMSG_HDRLEN {
            return Err(ParseError::Truncated {
                kind: KIND,
                field: "nlmsghdr",
            });
        }
        let len = u32_at(rest, 0).map_or(0, |v| v as usize);
        let ty = u16_at(rest, 4).unwrap_or(0);
        if len < NLMSG_HDRLEN {
            return Err(ParseError::invalid(KIND, "nlmsg_len", &rest[..4]));
        }
        let Some(msg) = rest.get(NLMSG_HDRLEN..len) else {
            return Err(ParseError::Truncated {
                kind: KIND,
                field: "nlmsg payload",
            });
        };
        match ty {
            NLMSG_NOOP => {}
            NLMSG_ERROR => {
                let errno = i32_at(msg, 0).ok_or(ParseError::Truncated {
                    kind: KIND,
                    field: "nlmsgerr",
                })?;
                // 0 is an acknowledgement; the kernel sends -errno.
                if errno != 0 {
                    out.push(ProcEvent::NetlinkError {
                        errno: errno.saturating_neg(),
                    });
                }
            }
            NLMSG_OVERRUN => out.push(ProcEvent::Overrun),
            // NLMSG_DONE is how the connector marks its data messages;
            // any other type is taken as one too.
            _ => out.push(parse_cn_msg(msg)?),
        }
        // Messages start on 4-byte boundaries; the last may lack padding.
        let next = len.saturating_add(3) & !3;
        rest = rest.get(next..).unwrap_or(&[]);
    }
    Ok(())
}

/// One `cn_msg` and the `proc_event` it carries.
fn parse_cn_msg(msg: &[u8]) -> Result<ProcEvent, ParseError> {
    let truncated = |field| ParseError::Truncated { kind: KIND, field };
    if msg.len() < CN_MSG_LEN {
        return Err(truncated("cn_msg"));
    }
    let idx = u32_at(msg, 0).ok_or(truncated("cn_msg"))?;
    let val = u32_at(msg, 4).ok_or(truncated("cn_msg"))?;
    let data_len = usize::from(u16_at(msg, 16).ok_or(truncated("cn_msg"))?);
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC) {
        return Ok(ProcEvent::Other);
    }
    let ev = msg
        .get(CN_MSG_LEN..CN_MSG_LEN.saturating_add(data_len))
        .ok_or(truncated("cn_msg data"))?;
    if ev.len() < PROC_EVENT_HDRLEN {
        return Err(truncated("proc_event"));
    }
    let what = u32_at(ev, 0).ok_or(truncated("proc_event"))?;
    let data = &ev[PROC_EVENT_HDRLEN..];
    let pid = |off: usize, field: &'static str| -> Result<u32, ParseError> {
        let v = i32_at(data, off).ok_or(truncated(field))?;
        u32::try_from(v).map_err(|_| ParseError::invalid(KIND, field, v.to_string().as_bytes()))
    };
    Ok(match what {
        PROC_EVENT_NONE => ProcEvent::Ack {
            err: u32_at(data, 0).ok_or(truncated("ack.err"))?,
        },
        PROC_EVENT_FORK => ProcEvent::Fork {
            parent_pid: pid(0, "fork.parent_pid")?,
            parent_tgid: pid(4, "fork.parent_tgid")?,
            child_pid: pid(8, "fork.child_pid")?,
            child_tgid: pid(12, "fork.child_tgid")?,
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            pid: pid(0, "exec.process_pid")?,
            tgid: pid(4, "exec.process_tgid")?,
        },
        PROC_EVENT_EXIT => ProcEvent::Exit {
            pid: pid(0, "exit.process_pid")?,
            tgid: pid(4, "exit.process_tgid")?,
        },
        _ => ProcEvent::Other,
    })
}

/// The message that subscribes (`op` = [`PROC_CN_MCAST_LISTEN`]) or
/// unsubscribes ([`PROC_CN_MCAST_IGNORE`]) the socket bound to netlink
/// port `port` to process events.
pub fn subscribe_message(op: u32, port: u32) -> [u8; SUBSCRIBE_MESSAGE_LEN] {
    let mut m = [0u8; SUBSCRIBE_MESSAGE_LEN];
    let mut put = |off: usize, bytes: &[u8]| {
        if let Some(dst) = m.get_mut(off..off + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    };
    // nlmsghdr: len, type NLMSG_DONE (what the connector expects), flags 0,
    // seq 0, our port.
    put(0, &(SUBSCRIBE_MESSAGE_LEN as u32).to_ne_bytes());
    put(4, &NLMSG_DONE.to_ne_bytes());
    put(12, &port.to_ne_bytes());
    // cn_msg: id, seq 0, ack 0, len 4, flags 0; then the op.
    put(16, &CN_IDX_PROC.to_ne_bytes());
    put(20, &CN_VAL_PROC.to_ne_bytes());
    put(32, &4u16.to_ne_bytes());
    put(36, &op.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    u32_at(b, off).map(|v| i32::from_ne_bytes(v.to_ne_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connector message as the kernel builds it: nlmsghdr (type
    /// NLMSG_DONE) + cn_msg + proc_event with `what` and `data`.
    fn event(what: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&123_456_789u64.to_ne_bytes()); // timestamp_ns
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        let mut cn = Vec::new();
        cn.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        cn.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        cn.extend_from_slice(&7u32.to_ne_bytes()); // seq
        cn.extend_from_slice(&0u32.to_ne_bytes()); // ack
        cn.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&0u16.to_ne_bytes());
        cn.extend_from_slice(&ev);
        nlmsg(NLMSG_DONE, &cn)
    }

    fn nlmsg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn parse(buf: &[u8]) -> (Vec<ProcEvent>, Result<(), ParseError>) {
        let mut out = Vec::new();
        let r = parse_proc_events(buf, &mut out);
        (out, r)
    }

    #[test]
    fn fork_exec_exit() {
        // Exit carries exit_code, exit_signal, parent_pid, parent_tgid too.
        let mut d = event(PROC_EVENT_FORK, &[100, 100, 4242, 4242]);
        d.extend(event(PROC_EVENT_EXEC, &[4242, 4242]));
        d.extend(event(PROC_EVENT_EXIT, &[4243, 4242, 0, 17, 100, 100]));
        let (evs, r) = parse(&d);
        r.unwrap();
        assert_eq!(
            evs,
            vec![
                ProcEvent::Fork {
                    parent_pid: 100,
                    parent_tgid: 100,
                    child_pid: 4242,
                    child_tgid: 4242
                },
                ProcEvent::Exec {
                    pid: 4242,
                    tgid: 4242
                },
                ProcEvent::Exit {
                    pid: 4243,
                    tgid: 4242
                },
            ]
        );
    }

    #[test]
    fn ack_other_kinds_and_other_connectors() {
        let mut d = event(PROC_EVENT_NONE, &[1]);
        d.extend(event(0x200, &[5, 5])); // PROC_EVENT_COMM
        d.extend(event(0x4000_0000, &[5, 5, 0, 0])); // PROC_EVENT_COREDUMP
        // A message for another connector index (e.g. CN_IDX_CIFS) with a
        // payload that is no proc_event.
        let mut cn = Vec::new();
        cn.extend_from_slice(&2u32.to_ne_bytes());
        cn.extend_from_slice(&1u32.to_ne_bytes());
        cn.extend_from_slice(&[0; 8]);
        cn.extend_from_slice(&3u16.to_ne_bytes());
        cn.extend_from_slice(&[0, 0, 1, 2, 3]);
        d.extend(nlmsg(NLMSG_DONE, &cn));
        let (evs, r) = parse(&d);
        r.unwrap();
        assert_eq!(
            evs,
            vec![
                ProcEvent::Ack { err: 1 },
                ProcEvent::Other,
                ProcEvent::Other,
                ProcEvent::Other
            ]
        );
    }

    #[test]
    fn netlink_errors_noop_and_overrun() {
        let mut d = nlmsg(NLMSG_ERROR, &(-105i32).to_ne_bytes()); // -ENOBUFS
        d.extend(nlmsg(NLMSG_ERROR, &0i32.to_ne_bytes())); // an ack: nothing
        d.extend(nlmsg(NLMSG_NOOP, &[]));
        d.extend(nlmsg(NLMSG_OVERRUN, &[]));
        d.extend(event(PROC_EVENT_EXEC, &[9, 9]));
        let (evs, r) = parse(&d);
        r.unwrap();
        assert_eq!(
            evs,
            vec![
                ProcEvent::NetlinkError { errno: 105 },
                ProcEvent::Overrun,
                ProcEvent::Exec { pid: 9, tgid: 9 }
            ]
        );
        let (_, r) = parse(&nlmsg(NLMSG_ERROR, &[1, 2]));
        assert!(matches!(
            r,
            Err(ParseError::Truncated {
                field: "nlmsgerr",
                ..
            })
        ));
    }

    #[test]
    fn the_last_message_may_lack_padding() {
        // A COMM event's payload is 24 bytes: 16 + 20 + 16 + 24 = 76, a
        // multiple of 4 already; cut the padding of an odd-sized one.
        let mut d = event(PROC_EVENT_EXEC, &[1, 1]);
        let mut odd = nlmsg(NLMSG_NOOP, &[0, 0, 0]);
        odd.truncate(NLMSG_HDRLEN + 3);
        d.extend(odd);
        let (evs, r) = parse(&d);
        r.unwrap();
        assert_eq!(evs, vec![ProcEvent::Exec { pid: 1, tgid: 1 }]);
    }

    #[test]
    fn cut_input_keeps_whole_events_and_says_what_was_cut() {
        let mut d = event(PROC_EVENT_EXEC, &[7, 7]);
        let first = d.len();
        d.extend(event(PROC_EVENT_FORK, &[7, 7, 8, 8]));
        for cut in first + 1..d.len() {
            let (evs, r) = parse(&d[..cut]);
            assert_eq!(evs, vec![ProcEvent::Exec { pid: 7, tgid: 7 }], "cut {cut}");
            assert!(
                matches!(r, Err(ParseError::Truncated { .. })),
                "cut {cut}: {r:?}"
            );
        }
        for cut in 1..first {
            let (evs, r) = parse(&d[..cut]);
            assert!(evs.is_empty() && r.is_err(), "cut {cut}");
        }
        assert!(matches!(parse(&[]).1, Err(ParseError::Empty { .. })));
    }

    #[test]
    fn odd_lengths_and_values_are_refused() {
        // nlmsg_len below the header's own size would loop forever if taken.
        let mut d = nlmsg(NLMSG_DONE, &[0; 20]);
        d[..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            parse(&d).1,
            Err(ParseError::InvalidValue {
                field: "nlmsg_len",
                ..
            })
        ));
        // A cn_msg claiming more data than the message holds.
        let mut d = event(PROC_EVENT_EXEC, &[1, 1]);
        d[NLMSG_HDRLEN + 16..NLMSG_HDRLEN + 18].copy_from_slice(&200u16.to_ne_bytes());
        assert!(matches!(
            parse(&d).1,
            Err(ParseError::Truncated {
                field: "cn_msg data",
                ..
            })
        ));
        // A negative pid.
        let d = event(PROC_EVENT_EXEC, &[u32::MAX, 1]);
        assert!(matches!(
            parse(&d).1,
            Err(ParseError::InvalidValue {
                field: "exec.process_pid",
                ..
            })
        ));
        // An exec event too short for its pids.
        let d = event(PROC_EVENT_EXEC, &[1]);
        assert!(matches!(
            parse(&d).1,
            Err(ParseError::Truncated {
                field: "exec.process_tgid",
                ..
            })
        ));
    }

    #[test]
    fn subscribe_message_layout() {
        let m = subscribe_message(PROC_CN_MCAST_LISTEN, 4242);
        assert_eq!(m.len(), 40);
        assert_eq!(u32_at(&m, 0), Some(40));
        assert_eq!(u16_at(&m, 4), Some(NLMSG_DONE));
        assert_eq!(u32_at(&m, 12), Some(4242));
        assert_eq!(u32_at(&m, 16), Some(CN_IDX_PROC));
        assert_eq!(u32_at(&m, 20), Some(CN_VAL_PROC));
        assert_eq!(u16_at(&m, 32), Some(4));
        assert_eq!(u32_at(&m, 36), Some(PROC_CN_MCAST_LISTEN));
        // Framed as the parser expects: it gets as far as the proc_event,
        // which a 4-byte op is too short to be.
        let mut out = Vec::new();
        assert!(matches!(
            parse_proc_events(&m, &mut out),
            Err(ParseError::Truncated {
                field: "proc_event",
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mut out = Vec::new();
            let _ = parse_proc_events(&data, &mut out);
            // At most one event per 16-byte header.
            proptest::prop_assert!(out.len() <= data.len() / NLMSG_HDRLEN);
        }

        #[test]
        fn never_panics_on_well_framed_junk(
            msgs in proptest::collection::vec(
                (proptest::num::u16::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..64)),
                0..8,
            )
        ) {
            let mut d = Vec::new();
            for (ty, payload) in &msgs {
                d.extend(nlmsg(*ty, payload));
            }
            let mut out = Vec::new();
            let _ = parse_proc_events(&d, &mut out);
            proptest::prop_assert!(out.len() <= msgs.len());
        }
    }
}
