//! The two signature algorithms, pinned to their key types (signed_bus/_keys.py).

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

pub const HS256: &str = "HS256";
pub const EDDSA: &str = "EdDSA";

/// Key material for one kid. Never printed: Debug is not derived. One per kid, so the size
/// difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Material {
    /// HMAC-SHA256 with both padded-key blocks hashed once (cloned per message).
    Hmac(Hmac<Sha256>),
    /// Ed25519: the verifying key, and the signing key where this holder may sign.
    Ed25519(VerifyingKey, Option<SigningKey>),
}

impl Material {
    pub fn hmac(secret: &[u8]) -> Material {
        // new_from_slice accepts any length (long secrets are hashed first, as RFC 2104 says)
        Material::Hmac(Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size"))
    }

    /// None when the public key does not decode (the caller then keeps the Python path).
    pub fn ed25519(public: &[u8; 32], private: Option<&[u8; 32]>) -> Option<Material> {
        let verifying = VerifyingKey::from_bytes(public).ok()?;
        let signing = private.map(SigningKey::from_bytes);
        if let Some(signing) = &signing {
            if signing.verifying_key().as_bytes() != public {
                return None;
            }
        }
        Some(Material::Ed25519(verifying, signing))
    }

    pub fn alg(&self) -> &'static str {
        match self {
            Material::Hmac(_) => HS256,
            Material::Ed25519(..) => EDDSA,
        }
    }

    pub fn signature_bytes(&self) -> usize {
        match self {
            Material::Hmac(_) => 32,
            Material::Ed25519(..) => 64,
        }
    }

    pub fn can_sign(&self) -> bool {
        !matches!(self, Material::Ed25519(_, None))
    }

    fn mac(mac: &Hmac<Sha256>, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = mac.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The signature over the concatenation of `parts`; None if this key cannot sign.
    pub fn sign(&self, parts: &[&[u8]]) -> Option<Vec<u8>> {
        match self {
            Material::Hmac(mac) => Some(Self::mac(mac, parts).to_vec()),
            Material::Ed25519(_, Some(signing)) => {
                Some(signing.sign(&parts.concat()).to_bytes().to_vec())
            }
            Material::Ed25519(_, None) => None,
        }
    }

    /// Whether `signature` is valid over the concatenation of `parts`: HMAC compared in
    /// constant time; Ed25519 cofactorless with a canonical S, as OpenSSL verifies
    /// (tests/unit/test_ed25519_strictness.py).
    pub fn verify(&self, parts: &[&[u8]], signature: &[u8]) -> bool {
        match self {
            Material::Hmac(mac) => tags_equal(&Self::mac(mac, parts), signature),
            Material::Ed25519(verifying, _) => match Signature::from_slice(signature) {
                Ok(signature) => verifying.verify(&parts.concat(), &signature).is_ok(),
                Err(_) => false,
            },
        }
    }
}

/// Whether `tag` equals `expected`, in constant time: four 64-bit words compared with subtle
/// (one optimisation barrier per word, where a byte slice's comparison puts one per byte).
/// A length other than 32 is unequal at once: the length is public.
pub(crate) fn tags_equal(expected: &[u8; 32], tag: &[u8]) -> bool {
    let Ok(tag) = <&[u8; 32]>::try_from(tag) else {
        return false;
    };
    let mut equal = Choice::from(1);
    for (a, b) in expected.chunks_exact(8).zip(tag.chunks_exact(8)) {
        let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]));
        equal &= word(a).ct_eq(&word(b));
    }
    bool::from(equal)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
