//! Protobuf wire primitives for the encoders that write their messages
//! as bytes directly (remote_write's and OTLP's sinks): varints, keys,
//! length-delimited fields.

pub(super) fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited field's key byte (field numbers below 16).
pub(super) const fn len_key(field: u8) -> u8 {
    (field << 3) | 2
}

/// The encoded size of a string field of `n` bytes (key, length, bytes).
pub(super) fn str_field_len(n: usize) -> usize {
    1 + varint_len(n as u64) + n
}
/// A string field: key, length, bytes.
pub(super) fn put_str(out: &mut Vec<u8>, field: u8, s: &str) {
    out.push(len_key(field));
    put_varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A 64-bit field (`fixed64`, `double`): key, 8 bytes little-endian.
pub(super) fn put_fixed64(out: &mut Vec<u8>, field: u8, bits: u64) {
    out.push((field << 3) | 1);
    out.extend_from_slice(&bits.to_le_bytes());
}

/// A length-delimited field's key and length; its `len` bytes follow.
pub(super) fn put_len(out: &mut Vec<u8>, field: u8, len: usize) {
    out.push(len_key(field));
    put_varint(out, len as u64);
}
