//! Envelope v1 bytes (docs/ENVELOPE.md): framing, the strict header reader, sealing, freshness.
//!
//! The reference is the pure-Python reader (signed_bus/_decode.py); every rule here mirrors one
//! there, and the Python differential tests hold both to the same bytes, verdicts and reasons.

/// The version tag.
pub const TAG: &str = "signed-bus/v1";
/// Start of every v1 value: fixarray(4), then the tag as a fixstr.
pub const VALUE_PREFIX: &[u8] = b"\x94\xadsigned-bus/v1";
/// Prefix of every signed message, then u32be(len(tag)) || tag.
pub const SIGNED_PREFIX: &[u8] = b"signed-bus/v1 sig\x00\x00\x00\x00\x0dsigned-bus/v1";
pub const DIGEST_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 16;
pub const MAX_PARENTS: usize = 64;
pub const MAX_TEXT_BYTES: usize = 255;
pub const MAX_INT: u64 = (1 << 63) - 1;
/// The longest protected header the rules allow (signed_bus/_envelope.py MAX_PROTECTED_BYTES).
pub const MAX_PROTECTED_BYTES: usize = 1 + 11 * 4 + 6 * (2 + 255) + 34 + 9 + 18 + 3 + 64 * 34 + 9;

/// Header keys, in the order the encoder writes them.
pub const KEYS: [&str; 11] = [
    "alg", "kid", "iss", "mdl", "cty", "tpc", "rkd", "iat", "nce", "par", "exp",
];
pub const K_ALG: usize = 0;
pub const K_KID: usize = 1;
pub const K_ISS: usize = 2;
pub const K_MDL: usize = 3;
pub const K_CTY: usize = 4;
pub const K_TPC: usize = 5;
pub const K_RKD: usize = 6;
pub const K_IAT: usize = 7;
pub const K_NCE: usize = 8;
pub const K_PAR: usize = 9;
pub const K_EXP: usize = 10;

/// Why a value was refused: the reason codes of signed_bus/errors.py.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Malformed,
    Oversized,
    UnsupportedVersion,
    UnknownKey,
    AlgorithmMismatch,
    UntrustedIssuer,
    BadSignature,
    WrongTopic,
    WrongKey,
    Expired,
    NotYetValid,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::Oversized => "oversized",
            Reason::UnsupportedVersion => "unsupported_version",
            Reason::UnknownKey => "unknown_key",
            Reason::AlgorithmMismatch => "algorithm_mismatch",
            Reason::UntrustedIssuer => "untrusted_issuer",
            Reason::BadSignature => "bad_signature",
            Reason::WrongTopic => "wrong_topic",
            Reason::WrongKey => "wrong_key",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
        }
    }
}

/// Offsets of the three bins of a v1 value: protected, body, signature (to the end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub p_start: usize,
    pub p_end: usize,
    pub b_start: usize,
    pub b_end: usize,
    pub s_start: usize,
}

fn be(bytes: &[u8]) -> usize {
    bytes.iter().fold(0usize, |n, b| (n << 8) | *b as usize)
}

/// (start, end) of the shortest-form bin whose header is at `pos`.
fn bin_at(value: &[u8], pos: usize) -> Result<(usize, usize), Reason> {
    let kind = *value.get(pos).ok_or(Reason::Malformed)?;
    let (width, min) = match kind {
        0xC4 => (1, 0),
        0xC5 => (2, 0x100),
        0xC6 => (4, 0x1_0000),
        _ => return Err(Reason::Malformed),
    };
    let start = pos + 1 + width;
    let n = be(value.get(pos + 1..start).ok_or(Reason::Malformed)?);
    if n < min {
        return Err(Reason::Malformed);
    }
    Ok((start, start + n))
}

/// signed_bus._decode.frame_offsets: the framing, read by hand.
pub fn frame(value: &[u8]) -> Result<Frame, Reason> {
    if !value.starts_with(VALUE_PREFIX) {
        return Err(classify_foreign(value));
    }
    let (p_start, p_end) = bin_at(value, VALUE_PREFIX.len())?;
    if p_end - p_start > MAX_PROTECTED_BYTES {
        return Err(Reason::Malformed);
    }
    let (b_start, b_end) = bin_at(value, p_end)?;
    let (s_start, s_end) = bin_at(value, b_end)?;
    if s_end != value.len() {
        return Err(Reason::Malformed);
    }
    Ok(Frame {
        p_start,
        p_end,
        b_start,
        b_end,
        s_start,
    })
}

/// signed_bus._decode._classify_foreign: another version's tag, or not an envelope at all.
pub fn classify_foreign(value: &[u8]) -> Reason {
    let size = value.len();
    let Some(&first) = value.first() else {
        return Reason::Malformed;
    };
    let (count, pos) = match first {
        0x90..=0x9F => ((first & 0x0F) as usize, 1),
        0xDC | 0xDD => {
            let pos = if first == 0xDC { 3 } else { 5 };
            if pos > size {
                return Reason::Malformed;
            }
            (be(&value[1..pos]), pos)
        }
        _ => return Reason::Malformed,
    };
    if count == 0 || pos >= size {
        return Reason::Malformed;
    }
    let kind = value[pos];
    let (start, n) = match kind {
        0xA0..=0xBF => (pos + 1, (kind & 0x1F) as usize),
        0xD9..=0xDB => {
            let width = 1usize << (kind - 0xD9);
            let start = pos + 1 + width;
            if start > size {
                return Reason::Malformed;
            }
            (start, be(&value[pos + 1..start]))
        }
        _ => return Reason::Malformed,
    };
    if start + n > size {
        return Reason::Malformed;
    }
    let tag = &value[start..start + n];
    if tag == TAG.as_bytes() || std::str::from_utf8(tag).is_err() {
        return Reason::Malformed;
    }
    Reason::UnsupportedVersion
}

/// A strictly decoded protected header, borrowing from the value.
#[derive(Debug, Clone)]
pub struct Header<'a> {
    /// The six texts (alg, kid, iss, mdl, cty, tpc) as their bytes: valid UTF-8 where the
    /// header came from `parse_header`; from `parse_header_fields`, not yet checked.
    pub texts: [&'a [u8]; 6],
    pub rkd: Option<&'a [u8]>,
    pub iat: u64,
    pub nce: &'a [u8],
    pub par: Vec<&'a [u8]>,
    pub exp: Option<u64>,
    /// Key indices (KEYS) in the order received: the first `keys` of them.
    order: [u8; KEYS.len()],
    keys: u8,
}

impl Header<'_> {
    /// Key indices (KEYS) in the order received.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.order[..self.keys as usize].iter().map(|&i| i as usize)
    }
}

/// The index in KEYS of a 3-byte key name.
pub(crate) fn key_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b"alg" => K_ALG,
        b"kid" => K_KID,
        b"iss" => K_ISS,
        b"mdl" => K_MDL,
        b"cty" => K_CTY,
        b"tpc" => K_TPC,
        b"rkd" => K_RKD,
        b"iat" => K_IAT,
        b"nce" => K_NCE,
        b"par" => K_PAR,
        b"exp" => K_EXP,
        _ => return None,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

type R<T> = Result<T, Reason>;

impl<'a> Reader<'a> {
    fn byte(&mut self) -> R<u8> {
        let b = *self.buf.get(self.pos).ok_or(Reason::Malformed)?;
        self.pos += 1;
        Ok(b)
    }
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        let out = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or(Reason::Malformed)?;
        self.pos += n;
        Ok(out)
    }
    /// A str in shortest form of 1 to MAX_TEXT_BYTES bytes (their UTF-8 is checked apart:
    /// see `parse_header_fields`).
    fn text(&mut self) -> R<&'a [u8]> {
        let n = match self.byte()? {
            k @ 0xA1..=0xBF => (k & 0x1F) as usize,
            0xD9 => {
                let n = self.byte()? as usize;
                if n < 32 {
                    return Err(Reason::Malformed);
                }
                n
            }
            _ => return Err(Reason::Malformed),
        };
        self.take(n)
    }
    /// A bin 8 of exactly `n` bytes (every bin in the header is shorter than 256 bytes).
    fn bin(&mut self, n: usize) -> R<&'a [u8]> {
        if self.byte()? != 0xC4 || self.byte()? as usize != n {
            return Err(Reason::Malformed);
        }
        self.take(n)
    }
    /// A non-negative int in shortest form, at most MAX_INT.
    fn uint(&mut self) -> R<u64> {
        let (width, min) = match self.byte()? {
            k @ 0x00..=0x7F => return Ok(k as u64),
            0xCC => (1, 0x80),
            0xCD => (2, 0x100),
            0xCE => (4, 0x1_0000),
            0xCF => (8, 0x1_0000_0000),
            _ => return Err(Reason::Malformed),
        };
        let n = self
            .take(width)?
            .iter()
            .fold(0u64, |n, b| (n << 8) | *b as u64);
        if n < min || n > MAX_INT {
            return Err(Reason::Malformed);
        }
        Ok(n)
    }
}

/// signed_bus._decode.decode_header_values: a fixmap of the ten required keys (plus exp), each
/// once, every value of its exact type, length and range, every item in shortest form, nothing
/// after the map. Every failure is malformed.
pub fn parse_header(protected: &[u8]) -> R<Header<'_>> {
    let h = parse_header_fields(protected)?;
    for text in h.texts {
        utf8(text)?;
    }
    Ok(h)
}

/// A header text as a str; malformed where it is not UTF-8.
pub fn utf8(text: &[u8]) -> R<&str> {
    std::str::from_utf8(text).map_err(|_| Reason::Malformed)
}

/// `parse_header` but for the UTF-8 of the six texts, which the caller checks (with `utf8`, or
/// by equality with a text it checked before) before it reads them or checks anything else:
/// a text that is not UTF-8 makes the header malformed, as any other failure here does.
pub fn parse_header_fields(protected: &[u8]) -> R<Header<'_>> {
    if protected.len() > MAX_PROTECTED_BYTES {
        return Err(Reason::Malformed);
    }
    let mut r = Reader {
        buf: protected,
        pos: 0,
    };
    let size = match r.byte()? {
        0x8A => 10,
        0x8B => 11,
        _ => return Err(Reason::Malformed),
    };
    let mut h = Header {
        texts: [&[]; 6],
        rkd: None,
        iat: 0,
        nce: &[],
        par: Vec::new(),
        exp: None,
        order: [0; KEYS.len()],
        keys: 0,
    };
    let mut seen = [false; 11];
    for _ in 0..size {
        // every key is a 3-byte fixstr
        if r.byte()? != 0xA3 {
            return Err(Reason::Malformed);
        }
        let name = r.take(3)?;
        let index = key_index(name).ok_or(Reason::Malformed)?;
        if seen[index] {
            return Err(Reason::Malformed);
        }
        seen[index] = true;
        h.order[h.keys as usize] = index as u8;
        h.keys += 1;
        match index {
            K_ALG..=K_TPC => h.texts[index] = r.text()?,
            K_RKD => {
                if r.buf.get(r.pos) == Some(&0xC0) {
                    r.pos += 1;
                    h.rkd = None;
                } else {
                    h.rkd = Some(r.bin(DIGEST_BYTES)?);
                }
            }
            K_IAT => h.iat = r.uint()?,
            K_NCE => h.nce = r.bin(NONCE_BYTES)?,
            K_PAR => {
                let n = match r.byte()? {
                    k @ 0x90..=0x9F => (k & 0x0F) as usize,
                    0xDC => {
                        let n = be(r.take(2)?);
                        if n < 16 {
                            return Err(Reason::Malformed);
                        }
                        n
                    }
                    _ => return Err(Reason::Malformed),
                };
                if n > MAX_PARENTS {
                    return Err(Reason::Malformed);
                }
                for _ in 0..n {
                    h.par.push(r.bin(DIGEST_BYTES)?);
                }
            }
            _ => h.exp = Some(r.uint()?),
        }
    }
    // 10 unique known keys without exp, or 11: all of them
    if seen[K_EXP] && size == 10 {
        return Err(Reason::Malformed);
    }
    if let Some(exp) = h.exp {
        if exp < h.iat {
            return Err(Reason::Malformed);
        }
    }
    if r.pos != protected.len() {
        return Err(Reason::Malformed);
    }
    Ok(h)
}

/// The freshness rule (signed_bus._freshness.Freshness.check), in wide integers.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub max_age_ms: i128,
    pub future_skew_ms: i128,
    pub max_lag_ms: i128,
}

impl Window {
    pub fn check(
        &self,
        created_at: u64,
        expires_at: Option<u64>,
        reference: i64,
        now: i64,
    ) -> Result<(), Reason> {
        let (iat, reference, now) = (created_at as i128, reference as i128, now as i128);
        let skew = self.future_skew_ms;
        if iat > reference + skew || iat > now + skew {
            return Err(Reason::NotYetValid);
        }
        if iat < reference - self.max_age_ms || iat < now - (self.max_age_ms + self.max_lag_ms) {
            return Err(Reason::Expired);
        }
        if let Some(exp) = expires_at {
            let exp = exp as i128;
            if exp < reference || exp < now {
                return Err(Reason::Expired);
            }
        }
        Ok(())
    }
}

/// A msgpack uint in its shortest form: the bytes, and how many of them are used.
pub fn uint_bytes(value: u64) -> ([u8; 9], usize) {
    let mut out = [0u8; 9];
    let used = if value < 0x80 {
        out[0] = value as u8;
        1
    } else if value < 0x100 {
        out[..2].copy_from_slice(&[0xCC, value as u8]);
        2
    } else if value < 0x1_0000 {
        out[0] = 0xCD;
        out[1..3].copy_from_slice(&(value as u16).to_be_bytes());
        3
    } else if value < 0x1_0000_0000 {
        out[0] = 0xCE;
        out[1..5].copy_from_slice(&(value as u32).to_be_bytes());
        5
    } else {
        out[0] = 0xCF;
        out[1..9].copy_from_slice(&value.to_be_bytes());
        9
    };
    (out, used)
}

/// The shortest bin header for `n` bytes (n < 2**32, checked by the caller): the bytes, and how
/// many of them are used.
pub fn bin_header(n: usize) -> ([u8; 5], usize) {
    let mut out = [0u8; 5];
    let used = if n < 0x100 {
        out[..2].copy_from_slice(&[0xC4, n as u8]);
        2
    } else if n < 0x1_0000 {
        out[0] = 0xC5;
        out[1..3].copy_from_slice(&(n as u16).to_be_bytes());
        3
    } else {
        out[0] = 0xC6;
        out[1..5].copy_from_slice(&(n as u32).to_be_bytes());
        5
    };
    (out, used)
}

/// Where the writers below put bytes: a growing `Vec`, or a [`Cursor`] over a buffer of the
/// exact size (the Python bytes object itself).
pub trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Writes into `buf` from its start; panics past its end (the callers size it exactly).
pub struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub fn pos(&self) -> usize {
        self.pos
    }
}

impl Sink for Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        self.buf[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }
}

fn push_uint(out: &mut impl Sink, value: u64) {
    let (bytes, used) = uint_bytes(value);
    out.put(&bytes[..used]);
}

/// The shortest bin header for `n` bytes (n < 2**32, checked by the caller).
pub fn push_bin_header(out: &mut impl Sink, n: usize) {
    let (bytes, used) = bin_header(n);
    out.put(&bytes[..used]);
}

/// The per-message inputs of signed_bus._envelope.seal (already validated by the signer).
pub struct SealInput<'a> {
    pub prefix: &'a [u8],
    pub topic_part: &'a [u8],
    pub rkd: Option<&'a [u8]>,
    pub created_at: u64,
    pub nonce: &'a [u8],
    pub parents_part: &'a [u8],
    pub expires_at: Option<u64>,
}

/// The length of the protected header [`write_protected`] writes for `input`.
pub fn protected_len(input: &SealInput<'_>) -> usize {
    let rkd = match input.rkd {
        None => 5,
        Some(rkd) => 6 + rkd.len(),
    };
    let exp = match input.expires_at {
        None => 0,
        Some(exp) => 4 + uint_bytes(exp).1,
    };
    1 + input.prefix.len()
        + input.topic_part.len()
        + rkd
        + 4
        + uint_bytes(input.created_at).1
        + 6
        + input.nonce.len()
        + 4
        + input.parents_part.len()
        + exp
}

/// Writes the protected header signed_bus._envelope.seal writes ([`protected_len`] bytes).
pub fn write_protected(p: &mut impl Sink, input: &SealInput<'_>) {
    p.put(if input.expires_at.is_none() {
        b"\x8a"
    } else {
        b"\x8b"
    });
    p.put(input.prefix);
    p.put(input.topic_part);
    match input.rkd {
        None => p.put(b"\xa3rkd\xc0"),
        Some(rkd) => {
            p.put(b"\xa3rkd\xc4\x20");
            p.put(rkd);
        }
    }
    p.put(b"\xa3iat");
    push_uint(p, input.created_at);
    p.put(b"\xa3nce\xc4\x10");
    p.put(input.nonce);
    p.put(b"\xa3par");
    p.put(input.parents_part);
    if let Some(exp) = input.expires_at {
        p.put(b"\xa3exp");
        push_uint(p, exp);
    }
}

/// The protected header signed_bus._envelope.seal writes.
pub fn protected_header(input: &SealInput<'_>) -> Vec<u8> {
    let mut p = Vec::with_capacity(protected_len(input));
    write_protected(&mut p, input);
    p
}

/// The pieces of the signed message, in order (signed_bus._envelope.signed_message).
pub fn signed_parts<'a>(
    protected: &'a [u8],
    body: &'a [u8],
    lengths: &'a [[u8; 4]; 2],
) -> [&'a [u8]; 5] {
    [SIGNED_PREFIX, &lengths[0], protected, &lengths[1], body]
}

pub fn lengths(protected: &[u8], body: &[u8]) -> [[u8; 4]; 2] {
    [
        (protected.len() as u32).to_be_bytes(),
        (body.len() as u32).to_be_bytes(),
    ]
}

/// The size of the record value [TAG, protected, body, signature].
pub fn envelope_len(protected: usize, body: usize, signature: usize) -> usize {
    VALUE_PREFIX.len()
        + bin_header(protected).1
        + protected
        + bin_header(body).1
        + body
        + bin_header(signature).1
        + signature
}

/// Writes the record value [TAG, protected, body, signature] into `out`, which is exactly
/// [`envelope_len`] bytes (the caller's buffer: the Python bytes object itself).
pub fn write_envelope(out: &mut [u8], protected: &[u8], body: &[u8], signature: &[u8]) {
    let mut out = Cursor::new(out);
    out.put(VALUE_PREFIX);
    for part in [protected, body, signature] {
        push_bin_header(&mut out, part.len());
        out.put(part);
    }
}

/// The record value [TAG, protected, body, signature].
pub fn envelope(protected: &[u8], body: &[u8], signature: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; envelope_len(protected.len(), body.len(), signature.len())];
    write_envelope(&mut out, protected, body, signature);
    out
}

/// One claim row's digests (signed_bus/_replay/layout.py): the 16-byte hash field, the shard
/// bytes (digest bytes 16-17) and the 8-byte position value. None where the layout cannot
/// encode the row (the Python planner then raises its error).
pub fn claim_digests(
    issuer: &str,
    nonce: &[u8],
    topic: &str,
    partition: i64,
    offset: i64,
) -> Option<([u8; 16], u16, [u8; 8])> {
    use sha2::{Digest, Sha256};
    let partition = i32::try_from(partition).ok()?;
    let issuer_len = u16::try_from(issuer.len()).ok()?;
    let topic_len = u16::try_from(topic.len()).ok()?;
    let mut h = Sha256::new();
    h.update(issuer_len.to_be_bytes());
    h.update(issuer.as_bytes());
    h.update(nonce);
    let digest = h.finalize();
    let mut p = Sha256::new();
    p.update(topic_len.to_be_bytes());
    p.update(topic.as_bytes());
    p.update(partition.to_be_bytes());
    p.update(offset.to_be_bytes());
    let position = p.finalize();
    let mut field = [0u8; 16];
    field.copy_from_slice(&digest[..16]);
    let mut value = [0u8; 8];
    value.copy_from_slice(&position[..8]);
    Some((field, u16::from_be_bytes([digest[16], digest[17]]), value))
}
