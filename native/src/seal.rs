//! The sealer's record value written in one pass into its final buffer.
//!
//! The Sealer (py_seal.rs) seals a msgpack body without parents or expiry. The protected
//! header then is a constant head (the map marker, the signer's alg..cty entries and the tpc
//! entry, kept per topic) followed by rkd, iat, nce and an empty par. [`write_value`] writes
//! that header and the body straight into the record value (the Python bytes object), signs
//! the signed bytes read back from it and writes the signature after them: no buffer of the
//! header or the signature of its own. The bytes are those of `wire::protected_header` and
//! `wire::envelope` (the tests below compare them).

use hmac::Mac;

use crate::crypto::Material;
use crate::wire::{SIGNED_PREFIX, VALUE_PREFIX};

/// The protected header's first bytes for one topic: a 10-entry map, then `prefix` (the alg..cty
/// entries, signed_bus._envelope.header_prefix) and `topic_part` (the tpc entry).
pub fn head(prefix: &[u8], topic_part: &[u8]) -> Vec<u8> {
    let mut head = Vec::with_capacity(1 + prefix.len() + topic_part.len());
    head.push(0x8A);
    head.extend_from_slice(prefix);
    head.extend_from_slice(topic_part);
    head
}

/// A msgpack uint in its shortest form: the bytes and how many of them are used.
fn uint(value: u64) -> ([u8; 9], usize) {
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

/// The shortest bin header for `n` bytes (n < 2**32, checked by the caller).
fn bin_header(n: usize) -> ([u8; 5], usize) {
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

/// The per-message inputs of a sealed value without parents or expiry.
pub struct Message<'a> {
    /// [`head`] of the signer's prefix and the topic.
    pub head: &'a [u8],
    /// SHA-256 of the record key; None for a record without a key.
    pub rkd: Option<&'a [u8; 32]>,
    /// created_at, int ms (at most wire::MAX_INT, checked by the caller).
    pub created_at: u64,
    pub nonce: &'a [u8; 16],
    /// The encoded body (under 4 GiB, checked by the caller).
    pub body: &'a [u8],
}

impl Message<'_> {
    /// The protected header's length.
    pub fn protected_len(&self) -> usize {
        let rkd = match self.rkd {
            None => 5,
            Some(_) => 4 + 2 + 32,
        };
        self.head.len() + rkd + 4 + uint(self.created_at).1 + 6 + 16 + 4 + 1
    }

    /// The record value's length with a signature of `signature` bytes.
    pub fn value_len(&self, signature: usize) -> usize {
        let protected = self.protected_len();
        VALUE_PREFIX.len()
            + bin_header(protected).1
            + protected
            + bin_header(self.body.len()).1
            + self.body.len()
            + bin_header(signature).1
            + signature
    }

    /// Writes the record value [TAG, protected, body, signature] signed with `key` into `out`,
    /// exactly [`Message::value_len`] bytes for the key's signature size; false (`out` then
    /// holds no valid value) where the key cannot sign.
    pub fn write_value(&self, key: &Material, out: &mut [u8]) -> bool {
        let protected_len = self.protected_len();
        let mut pos = 0;
        let mut put = |bytes: &[u8]| {
            out[pos..pos + bytes.len()].copy_from_slice(bytes);
            pos += bytes.len();
        };
        put(VALUE_PREFIX);
        let (header, used) = bin_header(protected_len);
        put(&header[..used]);
        let protected_at = VALUE_PREFIX.len() + used;
        put(self.head);
        match self.rkd {
            None => put(b"\xa3rkd\xc0"),
            Some(rkd) => {
                put(b"\xa3rkd\xc4\x20");
                put(rkd);
            }
        }
        put(b"\xa3iat");
        let (iat, used) = uint(self.created_at);
        put(&iat[..used]);
        put(b"\xa3nce\xc4\x10");
        put(self.nonce);
        put(b"\xa3par\x90");
        let (header, used) = bin_header(self.body.len());
        put(&header[..used]);
        put(self.body);
        let signature_at = pos;
        let protected = &out[protected_at..protected_at + protected_len];
        let parts: [&[u8]; 5] = [
            SIGNED_PREFIX,
            &(protected_len as u32).to_be_bytes(),
            protected,
            &(self.body.len() as u32).to_be_bytes(),
            self.body,
        ];
        let signature: Vec<u8>;
        let mut mac_bytes = [0u8; 32];
        let signature: &[u8] = match key {
            // HMAC: the padded-key state cloned and fed the parts; no allocation.
            Material::Hmac(mac) => {
                let mut mac = mac.clone();
                for part in parts {
                    mac.update(part);
                }
                mac_bytes.copy_from_slice(&mac.finalize().into_bytes());
                &mac_bytes
            }
            _ => match key.sign(&parts) {
                Some(bytes) => {
                    signature = bytes;
                    &signature
                }
                None => return false,
            },
        };
        let (header, used) = bin_header(signature.len());
        let end = signature_at + used + signature.len();
        if end != out.len() {
            return false;
        }
        out[signature_at..signature_at + used].copy_from_slice(&header[..used]);
        out[signature_at + used..end].copy_from_slice(signature);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, SealInput};

    fn expected(key: &Material, m: &Message<'_>, prefix: &[u8], topic_part: &[u8]) -> Vec<u8> {
        let protected = wire::protected_header(&SealInput {
            prefix,
            topic_part,
            rkd: m.rkd.map(|d| d.as_slice()),
            created_at: m.created_at,
            nonce: m.nonce,
            parents_part: b"\x90",
            expires_at: None,
        });
        let lengths = wire::lengths(&protected, m.body);
        let signature = key
            .sign(&wire::signed_parts(&protected, m.body, &lengths))
            .unwrap();
        wire::envelope(&protected, m.body, &signature)
    }

    const ED25519_PRIVATE: [u8; 32] = [7; 32];

    fn ed25519_public() -> [u8; 32] {
        ed25519_dalek::SigningKey::from_bytes(&ED25519_PRIVATE)
            .verifying_key()
            .to_bytes()
    }

    #[test]
    fn writes_the_bytes_of_the_general_seal() {
        let keys = [
            Material::hmac(b"a secret of thirty-two bytes ok!"),
            Material::ed25519(&ed25519_public(), Some(&ED25519_PRIVATE)).unwrap(),
        ];
        let prefix = b"\xa3alg\xa5HS256\xa3kid\xa2k1";
        let rkd = [7u8; 32];
        let nonce = [9u8; 16];
        let tpc = b"\xa3tpc\xa5bench";
        let head = head(prefix, tpc);
        let long_head = vec![0x41u8; 300];
        for key in &keys {
            for created_at in [0, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x1_0000, 1 << 40] {
                for body_len in [0, 1, 0xFF, 0x100, 0xFFFF, 0x1_0000] {
                    let body = vec![0xA5u8; body_len];
                    for rkd in [None, Some(&rkd)] {
                        let m = Message {
                            head: &head,
                            rkd,
                            created_at,
                            nonce: &nonce,
                            body: &body,
                        };
                        let want = expected(key, &m, prefix, tpc);
                        let mut out = vec![0u8; m.value_len(key.signature_bytes())];
                        assert!(m.write_value(key, &mut out));
                        assert_eq!(out, want);
                    }
                }
            }
            // A protected header over 255 bytes takes a bin 16 header.
            let m = Message {
                head: &long_head,
                rkd: None,
                created_at: 5,
                nonce: &nonce,
                body: b"\x80",
            };
            let mut out = vec![0u8; m.value_len(key.signature_bytes())];
            assert!(m.write_value(key, &mut out));
            assert_eq!(out[VALUE_PREFIX.len()], 0xC5);
        }
    }

    #[test]
    fn refuses_a_key_that_cannot_sign_or_a_buffer_of_another_size() {
        let m = Message {
            head: b"\x8a",
            rkd: None,
            created_at: 1,
            nonce: &[0; 16],
            body: b"",
        };
        let public = Material::ed25519(&ed25519_public(), None).unwrap();
        let mut out = vec![0u8; m.value_len(64)];
        assert!(!m.write_value(&public, &mut out));
        let mut longer = vec![0u8; m.value_len(32) + 1];
        assert!(!m.write_value(&Material::hmac(b"k"), &mut longer));
    }
}
