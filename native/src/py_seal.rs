//! `Sealer`: a Signer's default signing path in one call (signed_bus/_signer.py, Signer.sign).
//!
//! It holds what is constant for the signer (the key, the msgpack header prefix, the encoded
//! topic entries the Python side validated and handed over) and reads the per-message inputs
//! itself: the wall clock (signed_bus._clock.system_clock) and a nonce from the pool in
//! `nonces`. Anything else (a topic not seen yet, a record key that is not bytes, a body that is
//! not bytes) is answered None, and the Python path seals it and raises its own errors.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use crate::crypto::sha256;
use crate::nonces;
use crate::py::NativeKey;
use crate::wire::{self, SealInput, MAX_INT};

/// The parents entry of a message without parents: an empty fixarray.
const NO_PARENTS: &[u8] = b"\x90";

#[pyclass(frozen, module = "signed_bus_native")]
pub struct Sealer {
    key: Py<NativeKey>,
    prefix: Vec<u8>,
    topics: Mutex<HashMap<String, Vec<u8>>>,
    max_topics: usize,
}

fn now_ms() -> Option<u64> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    u64::try_from(since.as_millis())
        .ok()
        .filter(|ms| *ms <= MAX_INT)
}

#[pymethods]
impl Sealer {
    /// `prefix`: the encoded alg..cty entries (signed_bus._envelope.header_prefix) for the
    /// msgpack content type; at most `max_topics` topic entries are kept.
    #[new]
    fn new(key: Py<NativeKey>, prefix: Vec<u8>, max_topics: usize) -> Self {
        Sealer {
            key,
            prefix,
            topics: Mutex::new(HashMap::new()),
            max_topics,
        }
    }

    /// Keep the encoded tpc entry (signed_bus._envelope.topic_entry) of `topic`; False when
    /// the cache is full (that topic then keeps the Python path).
    fn add_topic(&self, topic: String, entry: Vec<u8>) -> bool {
        let mut topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
        if topics.len() >= self.max_topics && !topics.contains_key(&topic) {
            return false;
        }
        topics.insert(topic, entry);
        true
    }

    /// The record value for `body` (an encoded msgpack body) on `topic` with record `key`, no
    /// parents, no expiry, created now with a fresh nonce; None where the Python path must seal.
    fn sign<'py>(
        &self,
        py: Python<'py>,
        body: &Bound<'py, PyAny>,
        topic: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let Ok(body) = body.downcast_exact::<PyBytes>() else {
            return Ok(None);
        };
        let body = body.as_bytes();
        let Ok(topic) = topic.downcast_exact::<PyString>() else {
            return Ok(None);
        };
        let Ok(topic) = topic.to_str() else {
            return Ok(None);
        };
        let rkd = if key.is_none() {
            None
        } else {
            match key.downcast_exact::<PyBytes>() {
                Ok(key) => Some(sha256(key.as_bytes())),
                Err(_) => return Ok(None),
            }
        };
        if body.len() > u32::MAX as usize {
            return Ok(None);
        }
        let (Some(created_at), Some(nonce)) = (now_ms(), nonces::take()) else {
            return Ok(None);
        };
        let protected = {
            let topics = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let Some(topic_part) = topics.get(topic) else {
                return Ok(None);
            };
            wire::protected_header(&SealInput {
                prefix: &self.prefix,
                topic_part,
                rkd: rkd.as_ref().map(|d| d.as_slice()),
                created_at,
                nonce: &nonce,
                parents_part: NO_PARENTS,
                expires_at: None,
            })
        };
        let lengths = wire::lengths(&protected, body);
        let parts = wire::signed_parts(&protected, body, &lengths);
        let Some(signature) = self.key.get().material.sign(&parts) else {
            return Ok(None);
        };
        let size = wire::envelope_len(protected.len(), body.len(), signature.len());
        PyBytes::new_with(py, size, |out| {
            wire::write_envelope(out, &protected, body, &signature);
            Ok(())
        })
        .map(Some)
    }
}

/// Forget the pool's unused nonces (called in a forked child).
#[pyfunction]
pub fn drop_nonces() {
    nonces::drop_all();
}

/// The payload body's map-key rule (`body::check_map_keys`): 1 every map key is str or bin,
/// 0 one is not, -1 the Python check must decide (not one well-formed value, or too deep).
#[pyfunction]
pub fn check_map_keys(body: &[u8]) -> i8 {
    match crate::body::check_map_keys(body) {
        crate::body::Keys::Ok => 1,
        crate::body::Keys::Refused => 0,
        crate::body::Keys::Unsure => -1,
    }
}
