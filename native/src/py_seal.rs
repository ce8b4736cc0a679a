//! `Sealer`: a Signer's default signing path in one call (signed_bus/_signer.py, Signer.sign).
//!
//! It holds what is constant for the signer (the key, the msgpack header prefix, the encoded
//! topic entries the Python side validated and handed over) and reads the per-message inputs
//! itself: the wall clock (signed_bus._clock.system_clock) and a nonce from `nonces` (ChaCha20
//! keyed from the OS CSPRNG); `seal::Message` writes the value in one pass. Anything else (a topic not seen yet, a record key that is not bytes, a body that is
//! not bytes) is answered None, and the Python path seals it and raises its own errors.
//!
//! With a packer factory (signed_bus._payload.new_packer), `seal` also encodes: it does what
//! signed_bus._payload.encode_payload does (a pooled msgpack packer, the body's map-key rule)
//! and seals, in one call with no Python frame of ours.

use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::crypto::sha256;
use crate::nonces;
use crate::py::{record_key, NativeKey};
use crate::seal::{self, Message};
use crate::wire::MAX_INT;

#[pyclass(frozen, module = "signed_bus_native")]
pub struct Sealer {
    key: Py<NativeKey>,
    prefix: Vec<u8>,
    /// Per topic handed over: the protected header's constant bytes (`seal::head`:
    /// `prefix`, the topic's tpc entry).
    heads: Mutex<HashMap<String, Vec<u8>>>,
    max_topics: usize,
    /// Makes a msgpack packer (None: `seal` is not served); the packers `seal` may reuse: the
    /// default encoder's own pool (signed_bus._payload), one per process whatever the number of
    /// signers, each packer used by one call at a time; a packer is kept only after encoding at
    /// most `pooled_bytes` (it keeps its largest buffer) and while fewer than `max_pooled` are
    /// kept.
    new_packer: Option<Py<PyAny>>,
    packers: Option<Py<PyList>>,
    pooled_bytes: usize,
    max_pooled: usize,
}

/// What `Sealer::seal` answers: the record value, or the encoded body the Python path must
/// check and seal.
#[derive(IntoPyObject)]
pub enum Sealed<'py> {
    Value(Bound<'py, PyBytes>),
    Body(Bound<'py, PyTuple>),
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
    /// `new_packer`, `packers`, `pooled_bytes`, `max_pooled`: see the struct's fields.
    #[new]
    #[pyo3(signature = (key, prefix, max_topics, new_packer=None, packers=None, pooled_bytes=0, max_pooled=0))]
    fn new(
        key: Py<NativeKey>,
        prefix: Vec<u8>,
        max_topics: usize,
        new_packer: Option<Py<PyAny>>,
        packers: Option<Py<PyList>>,
        pooled_bytes: usize,
        max_pooled: usize,
    ) -> Self {
        Sealer {
            key,
            prefix,
            heads: Mutex::new(HashMap::new()),
            max_topics,
            new_packer,
            packers,
            pooled_bytes,
            max_pooled,
        }
    }

    /// `result` encoded and sealed as `sign` seals a body: the record value; None where the
    /// Python path must encode and seal (no packer factory, a topic not str, a record key not
    /// bytes: nothing was encoded); `(body,)` where it must check and seal the encoded body (a
    /// map key the extension does not clear, a topic not handed over yet, no clock or nonce).
    /// The encoder's errors propagate, as from encode_payload.
    fn seal<'py>(
        &self,
        py: Python<'py>,
        result: &Bound<'py, PyAny>,
        topic: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Sealed<'py>>> {
        let Some(new_packer) = &self.new_packer else {
            return Ok(None);
        };
        let Ok(topic) = topic.downcast_exact::<PyString>() else {
            return Ok(None);
        };
        let Some(key) = record_key(key) else {
            return Ok(None);
        };
        let rkd = key.map(|key| sha256(key.as_bytes()));
        // The pool is a Python list, read and written under the GIL with no Python code in
        // between (the item is held before it leaves the list), as the encoder's `pop`; the
        // packer's default hook may switch threads, and no packer is in the list while used.
        let pool = self.packers.as_ref().map(|pool| pool.bind(py));
        let pooled = match pool {
            Some(pool) if !pool.is_empty() => {
                let last = pool.len() - 1;
                let packer = pool.get_item(last)?;
                pool.del_item(last)?;
                Some(packer)
            }
            _ => None,
        };
        let packer = match pooled {
            Some(packer) => packer,
            None => new_packer.bind(py).call0()?,
        };
        // On an error the packer is dropped (msgpack resets it; it is not reused).
        let body = packer.call_method1(intern!(py, "pack"), (result,))?;
        let body = body.downcast_into::<PyBytes>()?;
        let bytes = body.as_bytes();
        if let Some(pool) = pool {
            if bytes.len() <= self.pooled_bytes && pool.len() < self.max_pooled {
                pool.append(packer)?;
            }
        }
        let cleared = crate::body::check_map_keys(bytes) == crate::body::Keys::Ok;
        let value = match (cleared, topic.to_str()) {
            (true, Ok(topic)) => self.seal_body(py, bytes, topic, rkd.as_ref())?,
            _ => None,
        };
        Ok(Some(match value {
            Some(value) => Sealed::Value(value),
            None => Sealed::Body(PyTuple::new(py, [body])?),
        }))
    }

    /// Keep the encoded tpc entry (signed_bus._envelope.topic_entry) of `topic`; False when
    /// the cache is full (that topic then keeps the Python path).
    fn add_topic(&self, topic: String, entry: Vec<u8>) -> bool {
        let mut heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        if heads.len() >= self.max_topics && !heads.contains_key(&topic) {
            return false;
        }
        heads.insert(topic, seal::head(&self.prefix, &entry));
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
        let Some(key) = record_key(key) else {
            return Ok(None);
        };
        let rkd = key.map(|key| sha256(key.as_bytes()));
        self.seal_body(py, body, topic, rkd.as_ref())
    }
}

impl Sealer {
    /// The record value for an encoded body; None where the Python path must seal it (a topic
    /// not handed over, a body over 4 GiB, no clock or nonce, a key that cannot sign).
    /// Written in one pass into the bytes object (`seal::Message::write_value`).
    fn seal_body<'py>(
        &self,
        py: Python<'py>,
        body: &[u8],
        topic: &str,
        rkd: Option<&[u8; 32]>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let material = &self.key.get().material;
        if body.len() > u32::MAX as usize || !material.can_sign() {
            return Ok(None);
        }
        let (Some(created_at), Some(nonce)) = (now_ms(), nonces::take()) else {
            return Ok(None);
        };
        let heads = self.heads.lock().unwrap_or_else(|p| p.into_inner());
        let Some(head) = heads.get(topic) else {
            return Ok(None);
        };
        let message = Message {
            head,
            rkd,
            created_at,
            nonce: &nonce,
            body,
        };
        let mut signed = true;
        let value = PyBytes::new_with(py, message.value_len(material.signature_bytes()), |out| {
            signed = message.write_value(material, out);
            Ok(())
        })?;
        Ok(signed.then_some(value))
    }
}

/// Forget the nonce generator's key (called in a forked child): the child's next nonce comes
/// from a key of its own.
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
