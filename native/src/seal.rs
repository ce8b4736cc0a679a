//! The sealer's record value written in one pass into its final buffer.
//!
//! The Sealer (py_seal.rs) seals a msgpack body without parents or expiry. The protected
//! header then starts with constant bytes kept per topic (the signer's alg..cty entries and the
//! tpc entry, [`head`]). [`Message::write_value`] writes the value straight into the record
//! value's buffer (the Python bytes object) with the writers of `wire` (the same that write
//! `wire::protected_header` and `wire::envelope`), signs the signed bytes read back from it and
//! writes the signature after them: no buffer of the header or of an HMAC signature of its own.

use hmac::Mac;

use crate::crypto::Material;
use crate::wire::{self, Cursor, SealInput, Sink, SIGNED_PREFIX, VALUE_PREFIX};

/// The protected header's constant bytes after its map marker for one topic: `prefix` (the
/// alg..cty entries, signed_bus._envelope.header_prefix) and `topic_part` (the tpc entry).
pub fn head(prefix: &[u8], topic_part: &[u8]) -> Vec<u8> {
    [prefix, topic_part].concat()
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
    /// The protected header's inputs, as `wire::write_protected` takes them.
    fn input(&self) -> SealInput<'_> {
        SealInput {
            prefix: self.head,
            topic_part: b"",
            rkd: self.rkd.map(|rkd| rkd.as_slice()),
            created_at: self.created_at,
            nonce: self.nonce,
            parents_part: b"\x90",
            expires_at: None,
        }
    }

    /// The record value's length with a signature of `signature` bytes.
    pub fn value_len(&self, signature: usize) -> usize {
        wire::envelope_len(
            wire::protected_len(&self.input()),
            self.body.len(),
            signature,
        )
    }

    /// Writes the record value [TAG, protected, body, signature] signed with `key` into `out`,
    /// exactly [`Message::value_len`] bytes for the key's signature size; false (`out` then
    /// holds no valid value) where the key cannot sign.
    pub fn write_value(&self, key: &Material, out: &mut [u8]) -> bool {
        let input = self.input();
        let protected_len = wire::protected_len(&input);
        let mut cursor = Cursor::new(out);
        cursor.put(VALUE_PREFIX);
        wire::push_bin_header(&mut cursor, protected_len);
        let protected_at = cursor.pos();
        wire::write_protected(&mut cursor, &input);
        wire::push_bin_header(&mut cursor, self.body.len());
        cursor.put(self.body);
        let signature_at = cursor.pos();
        let parts: [&[u8]; 5] = [
            SIGNED_PREFIX,
            &(protected_len as u32).to_be_bytes(),
            &out[protected_at..protected_at + protected_len],
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
        let (header, used) = wire::bin_header(signature.len());
        if signature_at + used + signature.len() != out.len() {
            return false;
        }
        let mut cursor = Cursor::new(&mut out[signature_at..]);
        cursor.put(&header[..used]);
        cursor.put(signature);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            head: b"",
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
