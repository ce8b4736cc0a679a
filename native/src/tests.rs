//! Known answers for the pure-Rust core; the Python differential tests cover the rest.

use crate::crypto::{sha256, tags_equal, Material};
use crate::wire::{self, Reason, SealInput, Window};

fn input<'a>(prefix: &'a [u8], topic: &'a [u8], nonce: &'a [u8]) -> SealInput<'a> {
    SealInput {
        prefix,
        topic_part: topic,
        rkd: None,
        created_at: 1_700_000_000_000,
        nonce,
        parents_part: b"\x90",
        expires_at: None,
    }
}

const PREFIX: &[u8] =
    b"\xa3alg\xa5HS256\xa3kid\xa1k\xa3iss\xa1a\xa3mdl\xa1m\xa3cty\xb3application/msgpack";

fn sealed(material: &Material) -> Vec<u8> {
    let nonce = [7u8; 16];
    let protected = wire::protected_header(&input(PREFIX, b"\xa3tpc\xa1t", &nonce));
    let body = b"\x81\xa1x\x01";
    let lengths = wire::lengths(&protected, body);
    let signature = material
        .sign(&wire::signed_parts(&protected, body, &lengths))
        .unwrap();
    wire::envelope(&protected, body, &signature)
}

#[test]
fn hmac_matches_rfc_4231_case_2() {
    let mac = Material::hmac(b"Jefe");
    let tag = mac.sign(&[b"what do ya want ", b"for nothing?"]).unwrap();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        hex,
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert!(mac.verify(&[b"what do ya want for nothing?"], &tag));
    let mut bad = tag.clone();
    bad[31] ^= 1;
    assert!(!mac.verify(&[b"what do ya want for nothing?"], &bad));
    assert!(!mac.verify(&[b"what do ya want for nothing?"], &tag[..31]));
}

#[test]
fn a_sealed_value_frames_decodes_and_verifies() {
    let mac = Material::hmac(&[1u8; 32]);
    let value = sealed(&mac);
    let frame = wire::frame(&value).unwrap();
    let header = wire::parse_header(&value[frame.p_start..frame.p_end]).unwrap();
    assert_eq!(
        header.texts.map(|text| wire::utf8(text).unwrap()),
        ["HS256", "k", "a", "m", "application/msgpack", "t"]
    );
    assert_eq!(header.iat, 1_700_000_000_000);
    assert_eq!(
        header.order().collect::<Vec<_>>(),
        (0..10).collect::<Vec<_>>()
    );
    let protected = &value[frame.p_start..frame.p_end];
    let body = &value[frame.b_start..frame.b_end];
    let lengths = wire::lengths(protected, body);
    assert!(mac.verify(
        &wire::signed_parts(protected, body, &lengths),
        &value[frame.s_start..]
    ));
}

#[test]
fn every_truncation_and_extension_is_malformed() {
    let value = sealed(&Material::hmac(&[1u8; 32]));
    for n in 0..value.len() {
        assert_eq!(
            wire::frame(&value[..n]).err(),
            Some(Reason::Malformed),
            "cut at {n}"
        );
    }
    let mut longer = value.clone();
    longer.push(0);
    assert_eq!(wire::frame(&longer).err(), Some(Reason::Malformed));
}

#[test]
fn another_version_tag_is_unsupported() {
    assert_eq!(
        wire::classify_foreign(b"\x94\xadsigned-bus/v2"),
        Reason::UnsupportedVersion
    );
    assert_eq!(
        wire::classify_foreign(b"\x91\xa1x"),
        Reason::UnsupportedVersion
    );
    assert_eq!(wire::classify_foreign(b"\x91\xa1\xff"), Reason::Malformed);
    assert_eq!(wire::classify_foreign(b"\x90"), Reason::Malformed);
    assert_eq!(wire::classify_foreign(b""), Reason::Malformed);
}

#[test]
fn header_rules() {
    // a duplicate key, a non-shortest int, an empty text: each malformed
    let nonce = [7u8; 16];
    let good = wire::protected_header(&input(PREFIX, b"\xa3tpc\xa1t", &nonce));
    assert!(wire::parse_header(&good).is_ok());
    let dup = [&good[..], b"\xa3tpc\xa1t"].concat();
    let mut dup = dup;
    dup[0] = 0x8B;
    assert_eq!(wire::parse_header(&dup).err(), Some(Reason::Malformed));
    let empty = wire::protected_header(&input(PREFIX, b"\xa3tpc\xa0", &nonce));
    assert_eq!(wire::parse_header(&empty).err(), Some(Reason::Malformed));
    let mut wide = good.clone();
    let at = wide.windows(4).position(|w| w == b"\xa3iat").unwrap() + 4;
    assert_eq!(wide[at], 0xCF);
    wide.splice(
        at..at + 9,
        [0xD3].into_iter().chain(1_700_000_000_000u64.to_be_bytes()),
    );
    assert_eq!(wire::parse_header(&wide).err(), Some(Reason::Malformed));
}

#[test]
fn freshness_window() {
    let w = Window {
        max_age_ms: 100,
        future_skew_ms: 10,
        max_lag_ms: 1000,
    };
    assert_eq!(w.check(1000, None, 1000, 1000), Ok(()));
    assert_eq!(w.check(1011, None, 1000, 2000), Err(Reason::NotYetValid));
    assert_eq!(w.check(899, None, 1000, 1000), Err(Reason::Expired));
    assert_eq!(w.check(1000, Some(999), 1000, 1000), Err(Reason::Expired));
    assert_eq!(w.check(1000, None, 1000, 2101), Err(Reason::Expired));
}

#[test]
fn ed25519_signs_as_rfc_8032_test_1() {
    let hex = |s: &str| -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    };
    let seed: [u8; 32] = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
        .try_into()
        .unwrap();
    let public: [u8; 32] = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        .try_into()
        .unwrap();
    let key = Material::ed25519(&public, Some(&seed)).unwrap();
    let signature = key.sign(&[b""]).unwrap();
    assert_eq!(signature, hex("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"));
    assert!(key.verify(&[b""], &signature));
    assert!(!key.verify(&[b"x"], &signature));
    assert!(Material::ed25519(&public, Some(&[0u8; 32])).is_none());
    assert_eq!(sha256(b"").len(), 32);
}

#[test]
fn a_batch_gives_each_check_its_own_verdict_in_order_on_any_number_of_threads() {
    use crate::batch::{verify_all, Check, MIN_PER_THREAD};
    let seed = [9u8; 32];
    let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
    let ed = Material::ed25519(public.as_bytes(), Some(&seed)).unwrap();
    let other = Material::ed25519(
        ed25519_dalek::SigningKey::from_bytes(&[3u8; 32])
            .verifying_key()
            .as_bytes(),
        None,
    )
    .unwrap();
    let hmac = Material::hmac(b"secret");
    let good_ed = sealed(&ed);
    let good_hmac = sealed(&hmac);
    let mut bad_ed = good_ed.clone();
    *bad_ed.last_mut().unwrap() ^= 1;
    let pieces = |value: &[u8]| {
        let frame = wire::frame(value).unwrap();
        (
            frame.p_start,
            frame.p_end,
            frame.b_start,
            frame.b_end,
            frame.s_start,
        )
    };
    // good, tampered, foreign key, HMAC: a pattern that no split lines up with
    let cases: [(&Material, &[u8], bool); 5] = [
        (&ed, &good_ed, true),
        (&ed, &bad_ed, false),
        (&other, &good_ed, false),
        (&hmac, &good_hmac, true),
        (&hmac, &bad_ed[..], false),
    ];
    let mut checks = Vec::new();
    let mut expected = Vec::new();
    for n in 0..(7 * MIN_PER_THREAD + 3) {
        let (material, value, valid) = cases[(n * 7 + n / 3) % cases.len()];
        let (p0, p1, b0, b1, s0) = pieces(value);
        checks.push(Check {
            material,
            protected: &value[p0..p1],
            body: &value[b0..b1],
            signature: &value[s0..],
        });
        expected.push(valid && material.signature_bytes() == value.len() - s0);
    }
    assert!(expected.iter().any(|v| *v) && expected.iter().any(|v| !*v));
    for threads in [1, 2, 3, 4, 16] {
        for len in [0, 1, MIN_PER_THREAD * 2, checks.len()] {
            assert_eq!(
                verify_all(&checks[..len], threads),
                expected[..len],
                "{threads} threads, {len} checks"
            );
        }
    }
}

#[test]
fn pooled_nonces_never_repeat_and_a_drop_forgets_the_rest() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..(3 * crate::nonces::POOL_NONCES + 7) {
        assert!(seen.insert(crate::nonces::take().unwrap()));
    }
    assert!(crate::nonces::left() > 0);
    crate::nonces::drop_all();
    assert_eq!(crate::nonces::left(), 0);
    assert!(seen.insert(crate::nonces::take().unwrap()));
    assert_eq!(crate::nonces::left(), crate::nonces::POOL_NONCES - 1);
}

#[test]
fn envelopes_are_framed_in_the_shortest_form_at_every_size() {
    for size in [0usize, 1, 255, 256, 65_535, 65_536, 70_000] {
        let body = vec![0xABu8; size];
        let protected = [1u8; 40];
        let signature = [2u8; 32];
        let value = wire::envelope(&protected, &body, &signature);
        assert_eq!(
            value.len(),
            wire::envelope_len(protected.len(), body.len(), signature.len())
        );
        let mut expected = wire::VALUE_PREFIX.to_vec();
        for part in [&protected[..], &body[..], &signature[..]] {
            wire::push_bin_header(&mut expected, part.len());
            expected.extend_from_slice(part);
        }
        assert_eq!(value, expected, "size {size}");
        let frame = wire::frame(&value).unwrap();
        assert_eq!(&value[frame.b_start..frame.b_end], &body[..]);
    }
}

#[test]
fn map_keys_of_any_other_type_are_refused_and_malformed_bodies_left_to_python() {
    use crate::body::{check_map_keys, Keys};
    assert_eq!(check_map_keys(b"\x81\xa1a\x01"), Keys::Ok); // {"a": 1}
    assert_eq!(check_map_keys(b"\x81\xc4\x01a\x01"), Keys::Ok); // {b"a": 1}
    assert_eq!(check_map_keys(b"\x81\x00\x01"), Keys::Refused); // {0: 1}
    assert_eq!(check_map_keys(b"\x81\xa1a\x81\xc3\x01"), Keys::Refused); // {"a": {True: 1}}
    assert_eq!(check_map_keys(b"\x92\x01\x81\xa1k\x90"), Keys::Ok); // [1, {"k": []}]
    assert_eq!(check_map_keys(b"\x81\xa1a\x81\xa1b\x01\x00"), Keys::Unsure); // trailing byte
    assert_eq!(check_map_keys(b"\x81\xa1a"), Keys::Unsure); // value missing
    assert_eq!(check_map_keys(b"\xc1"), Keys::Unsure);
    assert_eq!(check_map_keys(b"\xdf\xff\xff\xff\xff"), Keys::Unsure); // counts, no bytes
    assert_eq!(check_map_keys(b"\xc6\xff\xff\xff\xff"), Keys::Unsure);
    let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 2000).chain([0x01]).collect();
    assert_eq!(check_map_keys(&deep), Keys::Unsure);
    // a map value (not key) of any type, and an ext value
    assert_eq!(
        check_map_keys(b"\x82\xa1a\xd4\x01\x02\xa1b\xcb\0\0\0\0\0\0\0\0"),
        Keys::Ok
    );
}

#[test]
fn every_header_key_name_reads_as_its_index_and_nothing_else_does() {
    for (index, name) in wire::KEYS.iter().enumerate() {
        assert_eq!(wire::key_index(name.as_bytes()), Some(index));
    }
    for other in [&b"ALG"[..], b"al", b"algo", b"", b"ex\0"] {
        assert_eq!(wire::key_index(other), None);
    }
}

#[test]
fn a_tag_is_equal_only_to_the_same_32_bytes() {
    let tag: [u8; 32] = std::array::from_fn(|i| i as u8);
    assert!(tags_equal(&tag, &tag));
    for i in 0..32 {
        for bit in [0x01u8, 0x80] {
            let mut other = tag;
            other[i] ^= bit;
            assert!(!tags_equal(&tag, &other), "byte {i} bit {bit:#x}");
        }
    }
    assert!(!tags_equal(&tag, &tag[..31]));
    assert!(!tags_equal(&tag, &[tag.as_slice(), &[0]].concat()));
    assert!(!tags_equal(&tag, &[]));
}
