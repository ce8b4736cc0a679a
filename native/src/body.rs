//! The payload body's map-key rule (signed_bus/_payload.py, `_check_map_keys`): the decoding
//! profile (docs/ENVELOPE.md section 3) reads maps whose keys are str or bin only, and msgpack's
//! packer writes any key, so the encoder checks what it wrote before signing it.
//!
//! This walks the encoded value without building anything. It answers `Ok` or `Refused` only
//! for a well-formed single value within the nesting msgpack's reader accepts; anything else is
//! `Unsure`, and the Python check (msgpack's own reader) decides and words the error.

/// The verdict on one encoded body.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Keys {
    /// Every map key is str or bin.
    Ok,
    /// A map key of another type.
    Refused,
    /// Not one well-formed value (or nested deeper than `MAX_DEPTH`): the caller decides.
    Unsure,
}

/// Containers open at once; msgpack's C reader stops at 1024.
pub const MAX_DEPTH: usize = 1000;

fn read_be(body: &[u8], pos: &mut usize, n: usize) -> Option<u64> {
    let end = pos.checked_add(n)?;
    let bytes = body.get(*pos..end)?;
    *pos = end;
    Some(bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
}

fn is_str_or_bin(marker: u8) -> bool {
    matches!(marker, 0xa0..=0xbf | 0xd9..=0xdb | 0xc4..=0xc6)
}

/// What follows a marker: bytes to skip, or a container of this many slots (a map has two per
/// entry, its keys in the slots counted down from an even number).
enum Next {
    Skip(u64),
    Open(u64, bool),
}

fn next(marker: u8, body: &[u8], pos: &mut usize) -> Option<Next> {
    Some(match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Next::Skip(0),
        0x80..=0x8f => Next::Open(u64::from(marker & 0x0f) * 2, true),
        0x90..=0x9f => Next::Open(u64::from(marker & 0x0f), false),
        0xa0..=0xbf => Next::Skip(u64::from(marker & 0x1f)),
        0xc4 | 0xd9 => Next::Skip(read_be(body, pos, 1)?),
        0xc5 | 0xda => Next::Skip(read_be(body, pos, 2)?),
        0xc6 | 0xdb => Next::Skip(read_be(body, pos, 4)?),
        0xc7 => Next::Skip(read_be(body, pos, 1)? + 1),
        0xc8 => Next::Skip(read_be(body, pos, 2)? + 1),
        0xc9 => Next::Skip(read_be(body, pos, 4)? + 1),
        0xca | 0xce | 0xd2 => Next::Skip(4),
        0xcb | 0xcf | 0xd3 => Next::Skip(8),
        0xcc | 0xd0 => Next::Skip(1),
        0xcd | 0xd1 => Next::Skip(2),
        0xd4 => Next::Skip(2),
        0xd5 => Next::Skip(3),
        0xd6 => Next::Skip(5),
        0xd7 => Next::Skip(9),
        0xd8 => Next::Skip(17),
        0xdc => Next::Open(read_be(body, pos, 2)?, false),
        0xdd => Next::Open(read_be(body, pos, 4)?, false),
        0xde => Next::Open(read_be(body, pos, 2)? * 2, true),
        0xdf => Next::Open(read_be(body, pos, 4)? * 2, true),
        _ => return None, // 0xc1: never used
    })
}

/// Whether every map key of the msgpack value `body` is str or bin.
pub fn check_map_keys(body: &[u8]) -> Keys {
    let mut pos = 0usize;
    // (slots left, is a map); the bottom entry is the one top-level value
    let mut open: Vec<(u64, bool)> = vec![(1, false)];
    while let Some(top) = open.last_mut() {
        if top.0 == 0 {
            open.pop();
            continue;
        }
        let is_key = top.1 && top.0 % 2 == 0;
        top.0 -= 1;
        let Some(&marker) = body.get(pos) else {
            return Keys::Unsure;
        };
        pos += 1;
        if is_key && !is_str_or_bin(marker) {
            return Keys::Refused;
        }
        match next(marker, body, &mut pos) {
            None => return Keys::Unsure,
            Some(Next::Skip(n)) => {
                let Some(end) = usize::try_from(n).ok().and_then(|n| pos.checked_add(n)) else {
                    return Keys::Unsure;
                };
                if end > body.len() {
                    return Keys::Unsure;
                }
                pos = end;
            }
            Some(Next::Open(slots, is_map)) => {
                if slots > 0 {
                    if open.len() > MAX_DEPTH {
                        return Keys::Unsure;
                    }
                    open.push((slots, is_map));
                }
            }
        }
    }
    if pos == body.len() {
        Keys::Ok
    } else {
        Keys::Unsure
    }
}
