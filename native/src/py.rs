//! The Python module `signed_bus_native` (loaded by signed_bus/_native.py).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};

use crate::batch::{self, Check};
use crate::crypto::{sha256, Material};
use crate::py_header::CheckedHeader;
use crate::wire::{self, Frame, Header, Reason, SealInput, Window};

/// Key material for one kid, built from a signed_bus Key. Opaque: no repr of the material, no
/// pickling.
#[pyclass(frozen, module = "signed_bus_native", name = "Key")]
pub struct NativeKey {
    pub(crate) material: Material,
    /// Ordered: a key trusts a few issuers, found by a comparison or two (a hash set hashed
    /// the issuer of every value first).
    issuers: BTreeSet<String>,
}

#[pymethods]
impl NativeKey {
    #[staticmethod]
    fn hmac(secret: &[u8], issuers: BTreeSet<String>) -> Self {
        NativeKey {
            material: Material::hmac(secret),
            issuers,
        }
    }

    /// None when the key does not decode here (the Python path then serves this kid).
    #[staticmethod]
    #[pyo3(signature = (public, issuers, private = None))]
    fn ed25519(public: &[u8], issuers: BTreeSet<String>, private: Option<&[u8]>) -> Option<Self> {
        let public: &[u8; 32] = public.try_into().ok()?;
        let private: Option<&[u8; 32]> = match private {
            None => None,
            Some(raw) => Some(raw.try_into().ok()?),
        };
        Some(NativeKey {
            material: Material::ed25519(public, private)?,
            issuers,
        })
    }

    #[getter]
    fn alg(&self) -> &'static str {
        self.material.alg()
    }

    #[getter]
    fn can_sign(&self) -> bool {
        self.material.can_sign()
    }

    fn sign<'py>(&self, py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
        match self.material.sign(&[message]) {
            Some(signature) => Ok(PyBytes::new(py, &signature)),
            None => Err(PyValueError::new_err(
                "this key holds only a public key and cannot sign",
            )),
        }
    }

    /// Whether the signature is valid; Ed25519 runs without the GIL.
    fn verify(&self, py: Python<'_>, message: &[u8], signature: &[u8]) -> bool {
        verify_parts(py, &self.material, &[message], signature)
    }

    /// signed_bus._envelope.seal with this key: the protected header, the signature and the
    /// framing in one call. `sign` (the Python signing function) is accepted and not used.
    #[pyo3(signature = (prefix, topic_part, rkd, created_at, nonce, parents_part, expires_at, body, sign = None))]
    #[allow(clippy::too_many_arguments)]
    fn seal<'py>(
        &self,
        py: Python<'py>,
        prefix: &[u8],
        topic_part: &[u8],
        rkd: Option<&[u8]>,
        created_at: u64,
        nonce: &[u8],
        parents_part: &[u8],
        expires_at: Option<u64>,
        body: &[u8],
        sign: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let _ = sign;
        if body.len() > u32::MAX as usize {
            return Err(PyValueError::new_err(
                "msgpack bin is limited to 2**32 - 1 bytes",
            ));
        }
        let input = SealInput {
            prefix,
            topic_part,
            rkd,
            created_at,
            nonce,
            parents_part,
            expires_at,
        };
        let protected = wire::protected_header(&input);
        let lengths = wire::lengths(&protected, body);
        let parts = wire::signed_parts(&protected, body, &lengths);
        let signature = self.material.sign(&parts).ok_or_else(|| {
            PyValueError::new_err("this key holds only a public key and cannot sign")
        })?;
        Ok(PyBytes::new(
            py,
            &wire::envelope(&protected, body, &signature),
        ))
    }
}

fn verify_parts(py: Python<'_>, material: &Material, parts: &[&[u8]], signature: &[u8]) -> bool {
    match material {
        Material::Hmac(_) => material.verify(parts, signature),
        // Other threads run meanwhile (Python threads calling open verify on several cores).
        Material::Ed25519(..) => py.allow_threads(|| material.verify(parts, signature)),
    }
}

/// The header's six texts as Python strings, shared by the keyring lookups, the header map or
/// object, and every value whose six texts are those of the value before (one reference count
/// instead of six per value, and again when its message goes).
type Texts = Arc<[Py<PyString>; 6]>;

enum Outcome<'a> {
    Verified(Header<'a>, Frame, Texts),
    /// Authentic, but outside the freshness window at `now`.
    Stale(Header<'a>, Frame, Texts, i64, Reason),
    Rejected(Reason),
    /// The Python path must decide (a key without native material, a clock that is not an int).
    Python,
    /// The key cache no longer matches the keyring: refresh it and call again.
    Refresh,
}

/// Opens (verifies) record values for one Verifier: size cap, strict decode, policy against the
/// live keyring, signature, destination, freshness (signed_bus/_verifier.py, Verifier.verify).
#[pyclass(frozen, module = "signed_bus_native")]
pub struct Opener {
    keyring: Py<PyAny>,
    cache: Py<PyDict>,
    max_bytes: usize,
    window: Window,
    audit: bool,
    clock: Py<PyAny>,
    /// The clock is signed_bus._clock.system_clock (time.time_ns() // 1_000_000): read the same
    /// wall clock here instead of calling back into Python.
    system_clock: bool,
    /// Builds the VerifiedMessage of a verified value (see `MessageMaker`); None: answer the
    /// `(header, body, None)` tuple instead.
    maker: Option<MessageMaker>,
    /// The last Python string made for each header text: headers repeat from record to record,
    /// so most values reuse one (with its hash already computed for the keyring lookup).
    texts: Mutex<Option<HeldTexts>>,
    /// The cache entry the last value used: its kid's string, the keyring's key object and
    /// the native key (most values name the same kid as the one before).
    last_key: Mutex<Option<LastKey>>,
}

/// A kid's string, the keyring's key object for it and the native key built from that object.
type LastKey = (Py<PyString>, Py<PyAny>, Py<NativeKey>);

/// The last header texts and the Python strings made for them.
struct HeldTexts {
    raw: [Box<str>; 6],
    strings: Texts,
}

/// signed_bus._message._build's way of building a VerifiedMessage without __init__ (the class
/// refuses attribute writes) or a Python call per field: a draft (the same slots, no frozen
/// `__setattr__`) made by calling its class, its slots written as plain attributes (`_header`,
/// `body`, `_value`, `_payload` = the undecoded sentinel), then its `__class__` set to the
/// message class, which CPython allows between classes of the same layout.
struct MessageMaker {
    draft: Py<PyAny>,
    cls: Py<PyAny>,
    undecoded: Py<PyAny>,
}

impl MessageMaker {
    fn make<'py>(
        &self,
        py: Python<'py>,
        header: Bound<'py, PyAny>,
        body: Bound<'py, PyBytes>,
        value: &Bound<'py, PyBytes>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let message = self.draft.bind(py).call0()?;
        message.setattr(intern!(py, "_header"), header)?;
        message.setattr(intern!(py, "body"), body)?;
        message.setattr(intern!(py, "_value"), value)?;
        message.setattr(intern!(py, "_payload"), self.undecoded.bind(py))?;
        message.setattr(intern!(py, "__class__"), self.cls.bind(py))?;
        Ok(message)
    }
}

/// The pieces of a MessageMaker, as signed_bus/_native.py hands them over: the draft class,
/// the message class, the sentinel.
type MakerParts = (Py<PyAny>, Py<PyAny>, Py<PyAny>);

fn header_key<'py>(py: Python<'py>, index: usize) -> &'py Bound<'py, PyString> {
    match index {
        wire::K_ALG => intern!(py, "alg"),
        wire::K_KID => intern!(py, "kid"),
        wire::K_ISS => intern!(py, "iss"),
        wire::K_MDL => intern!(py, "mdl"),
        wire::K_CTY => intern!(py, "cty"),
        wire::K_TPC => intern!(py, "tpc"),
        wire::K_RKD => intern!(py, "rkd"),
        wire::K_IAT => intern!(py, "iat"),
        wire::K_NCE => intern!(py, "nce"),
        wire::K_PAR => intern!(py, "par"),
        _ => intern!(py, "exp"),
    }
}

fn header_dict<'py>(
    py: Python<'py>,
    h: &Header<'_>,
    texts: &Texts,
) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for index in h.order() {
        let key = header_key(py, index);
        match index {
            wire::K_ALG..=wire::K_TPC => dict.set_item(key, texts[index].bind(py))?,
            wire::K_RKD => match h.rkd {
                None => dict.set_item(key, py.None())?,
                Some(rkd) => dict.set_item(key, PyBytes::new(py, rkd))?,
            },
            wire::K_IAT => dict.set_item(key, h.iat)?,
            wire::K_NCE => dict.set_item(key, PyBytes::new(py, h.nce))?,
            wire::K_PAR => {
                let parents = PyList::empty(py);
                for parent in &h.par {
                    parents.append(PyBytes::new(py, parent))?;
                }
                dict.set_item(key, parents)?
            }
            _ => dict.set_item(key, h.exp)?,
        }
    }
    Ok(dict)
}

/// What the checks before the signature found.
enum Step<'a, 'py> {
    Done(Outcome<'a>),
    /// The policy allows the value: its signature decides, then destination and freshness.
    Sign(Pending<'a, 'py>),
}

/// A value whose signature is still to check.
struct Pending<'a, 'py> {
    native: Bound<'py, NativeKey>,
    value: &'a [u8],
    topic: &'a str,
    reference: Option<i64>,
    frame: Frame,
    h: Header<'a>,
    texts: Texts,
}

impl<'a> Pending<'a, '_> {
    fn check(&self) -> Check<'_> {
        let frame = &self.frame;
        Check {
            material: &self.native.get().material,
            protected: &self.value[frame.p_start..frame.p_end],
            body: &self.value[frame.b_start..frame.b_end],
            signature: &self.value[frame.s_start..],
        }
    }

    fn is_ed25519(&self) -> bool {
        matches!(self.native.get().material, Material::Ed25519(..))
    }
}

/// One item of a batch, borrowed by the checks: value, topic, record key, reference time.
type Item<'py> = (
    Bound<'py, PyBytes>,
    Bound<'py, PyAny>,
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyAny>>,
);

impl Opener {
    /// The header's texts as Python strings, reusing the last one made for each field when
    /// the text has the same bytes (which proves them UTF-8: only a new text is checked);
    /// Err(malformed) for a text that is not UTF-8.
    fn texts_of(&self, py: Python<'_>, texts: &[&[u8]; 6]) -> Result<Texts, Reason> {
        let mut held = self.texts.lock().unwrap_or_else(|p| p.into_inner());
        let same: [bool; 6] = std::array::from_fn(|index| match &*held {
            Some(last) => last.raw[index].as_bytes() == texts[index],
            None => false,
        });
        // Every text is checked before any string is made: the first invalid one decides.
        for (index, text) in texts.iter().enumerate() {
            if !same[index] {
                wire::utf8(text)?;
            }
        }
        if let (true, Some(last)) = (same.iter().all(|same| *same), &*held) {
            return Ok(last.strings.clone());
        }
        let text = |index: usize| wire::utf8(texts[index]).unwrap_or_default();
        let strings: [Py<PyString>; 6] = std::array::from_fn(|index| match &*held {
            Some(last) if same[index] => last.strings[index].clone_ref(py),
            _ => PyString::new(py, text(index)).unbind(),
        });
        let strings = Arc::new(strings);
        let raw = std::array::from_fn(|index| text(index).into());
        let replaced = held.replace(HeldTexts {
            raw,
            strings: strings.clone(),
        });
        drop(held);
        drop(replaced); // outside the lock
        Ok(strings)
    }

    /// Milliseconds since the epoch, floored, when the clock is the system clock.
    fn system_now(&self) -> Option<i64> {
        if !self.system_clock {
            return None;
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?;
        i64::try_from(since.as_millis()).ok()
    }

    /// Every check of Verifier.verify, in its order: the signature on this thread (Ed25519
    /// with the GIL released).
    fn check<'a, 'py>(
        &self,
        py: Python<'py>,
        value: &'a [u8],
        topic: &'a Bound<'py, PyAny>,
        key: Option<&[u8]>,
        reference_ms: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Outcome<'a>> {
        match self.before(py, value, topic, reference_ms)? {
            Step::Done(outcome) => Ok(outcome),
            Step::Sign(pending) => {
                let valid = match pending.is_ed25519() {
                    true => {
                        let check = pending.check();
                        py.allow_threads(|| check.verify())
                    }
                    false => pending.check().verify(),
                };
                self.after(py, pending, key, valid)
            }
        }
    }

    /// The checks before the signature: size cap, decode, policy.
    fn before<'a, 'py>(
        &self,
        py: Python<'py>,
        value: &'a [u8],
        topic: &'a Bound<'py, PyAny>,
        reference_ms: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Step<'a, 'py>> {
        let done = |outcome| Ok(Step::Done(outcome));
        let Ok(topic) = topic.downcast::<PyString>() else {
            return done(Outcome::Python);
        };
        // A str that is not valid UTF-8 (a lone surrogate) is no topic a record was signed
        // for: the Python path gives its verdict, as for any other topic it must judge.
        let Ok(topic) = topic.to_str() else {
            return done(Outcome::Python);
        };
        let reference = match reference_ms {
            None => None,
            Some(obj) => match obj.extract::<i64>() {
                Ok(n) => Some(n),
                Err(_) => return done(Outcome::Python),
            },
        };
        if value.len() > self.max_bytes {
            return done(Outcome::Rejected(Reason::Oversized));
        }
        let frame = match wire::frame(value) {
            Ok(frame) => frame,
            Err(reason) => return done(Outcome::Rejected(reason)),
        };
        let h = match wire::parse_header_fields(&value[frame.p_start..frame.p_end]) {
            Ok(h) => h,
            Err(reason) => return done(Outcome::Rejected(reason)),
        };
        // The texts' UTF-8, the last rule of the decode, before any policy check.
        let texts = match self.texts_of(py, &h.texts) {
            Ok(texts) => texts,
            Err(reason) => return done(Outcome::Rejected(reason)),
        };
        let alg = h.texts[wire::K_ALG];
        let sig_bytes = if alg == crate::crypto::HS256.as_bytes() {
            32
        } else if alg == crate::crypto::EDDSA.as_bytes() {
            64
        } else {
            return done(Outcome::Rejected(Reason::AlgorithmMismatch));
        };
        let keys = self.keyring.bind(py).getattr(intern!(py, "_keys"))?;
        let Ok(keys) = keys.downcast::<PyDict>() else {
            return done(Outcome::Python);
        };
        let Some(key_obj) = keys.get_item(texts[wire::K_KID].bind(py))? else {
            return done(Outcome::Rejected(Reason::UnknownKey));
        };
        // Only pointer comparisons and reference counts while the lock is held: a dict lookup
        // could run Python code (a key's __eq__), and another thread could then wait for this
        // lock while holding the GIL.
        let hit = {
            let last = self.last_key.lock().unwrap_or_else(|p| p.into_inner());
            match &*last {
                Some((kid, held, native))
                    if kid.is(&texts[wire::K_KID]) && held.bind(py).is(&key_obj) =>
                {
                    Some(native.clone_ref(py))
                }
                _ => None,
            }
        };
        let native = match hit {
            Some(native) => native.into_bound(py),
            None => {
                let Some(entry) = self.cache.bind(py).get_item(texts[wire::K_KID].bind(py))? else {
                    return done(Outcome::Refresh);
                };
                let entry = entry.downcast_into::<PyTuple>()?;
                if !entry.get_item(0)?.is(&key_obj) {
                    return done(Outcome::Refresh);
                }
                let Ok(native) = entry.get_item(1)?.downcast_into::<NativeKey>() else {
                    return done(Outcome::Python);
                };
                let entry = (
                    texts[wire::K_KID].clone_ref(py),
                    key_obj.clone().unbind(),
                    native.clone().unbind(),
                );
                let replaced = {
                    let mut last = self.last_key.lock().unwrap_or_else(|p| p.into_inner());
                    last.replace(entry)
                };
                drop(replaced); // outside the lock: freeing a key object may run Python code
                native
            }
        };
        let key_ref = native.get();
        if alg != key_ref.material.alg().as_bytes() {
            return done(Outcome::Rejected(Reason::AlgorithmMismatch));
        }
        if !key_ref
            .issuers
            .contains(texts[wire::K_ISS].bind(py).to_str()?)
        {
            return done(Outcome::Rejected(Reason::UntrustedIssuer));
        }
        if value.len() - frame.s_start != sig_bytes {
            return done(Outcome::Rejected(Reason::BadSignature));
        }
        Ok(Step::Sign(Pending {
            native,
            value,
            topic,
            reference,
            frame,
            h,
            texts,
        }))
    }

    /// The checks after the signature (`valid`): destination, freshness.
    fn after<'a, 'py>(
        &self,
        py: Python<'py>,
        pending: Pending<'a, 'py>,
        key: Option<&[u8]>,
        valid: bool,
    ) -> PyResult<Outcome<'a>> {
        if !valid {
            return Ok(Outcome::Rejected(Reason::BadSignature));
        }
        let Pending {
            topic,
            reference,
            frame,
            h,
            texts,
            ..
        } = pending;
        if h.texts[wire::K_TPC] != topic.as_bytes() {
            return Ok(Outcome::Rejected(Reason::WrongTopic));
        }
        let key_matches = match (h.rkd, key) {
            (None, None) => true,
            (Some(rkd), Some(key)) => rkd == sha256(key),
            _ => false,
        };
        if !key_matches {
            return Ok(Outcome::Rejected(Reason::WrongKey));
        }
        if self.audit {
            return Ok(Outcome::Verified(h, frame, texts));
        }
        let now = match self.system_now() {
            Some(now) => now,
            None => match self.clock.bind(py).call0()?.extract::<i64>() {
                Ok(now) => now,
                Err(_) => return Ok(Outcome::Python),
            },
        };
        match self
            .window
            .check(h.iat, h.exp, reference.unwrap_or(now), now)
        {
            Ok(()) => Ok(Outcome::Verified(h, frame, texts)),
            Err(reason) => Ok(Outcome::Stale(h, frame, texts, now, reason)),
        }
    }
}

/// What `Opener.open` returns for an outcome (see there).
fn outcome_object<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyBytes>,
    maker: Option<&MessageMaker>,
    outcome: Outcome<'_>,
) -> PyResult<PyObject> {
    let raw = value.as_bytes();
    Ok(match outcome {
        Outcome::Verified(h, frame, texts) => {
            let body = PyBytes::new(py, &raw[frame.b_start..frame.b_end]);
            match maker {
                // The message holds the checked header as one object (see `CheckedHeader`).
                Some(maker) => match CheckedHeader::new(&h, texts) {
                    Some(checked) => {
                        let header = Bound::new(py, checked)?.into_any();
                        maker.make(py, header, body, value)?.unbind()
                    }
                    None => PyString::new(py, "").into_any().unbind(),
                },
                None => (header_dict(py, &h, &texts)?, body, py.None())
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
            }
        }
        Outcome::Stale(h, frame, texts, now, _) => {
            let body = PyBytes::new(py, &raw[frame.b_start..frame.b_end]);
            (header_dict(py, &h, &texts)?, body, now)
                .into_pyobject(py)?
                .into_any()
                .unbind()
        }
        Outcome::Rejected(reason) => PyString::intern(py, reason.code()).into_any().unbind(),
        Outcome::Python => PyString::new(py, "").into_any().unbind(),
        Outcome::Refresh => py.None(),
    })
}

/// A record key as the native paths take it: `Some(None)` for None, `Some(bytes)` for exactly
/// `bytes`; None for anything else, which the Python path checks or converts.
pub(crate) fn record_key<'py>(key: &Bound<'py, PyAny>) -> Option<Option<Bound<'py, PyBytes>>> {
    if key.is_none() {
        return Some(None);
    }
    key.downcast_exact::<PyBytes>()
        .ok()
        .map(|key| Some(key.clone()))
}

/// A batch item as the checks take it; None where it is not (bytes, any, bytes or None, any;
/// exactly bytes, as Verifier.verify takes them without a copy).
fn item<'py>(obj: Bound<'py, PyAny>) -> Option<Item<'py>> {
    let tuple = obj.downcast_into::<PyTuple>().ok()?;
    if tuple.len() != 4 {
        return None;
    }
    let value = tuple
        .get_item(0)
        .ok()?
        .downcast_into_exact::<PyBytes>()
        .ok()?;
    let topic = tuple.get_item(1).ok()?;
    let key = record_key(&tuple.get_item(2).ok()?)?;
    let reference = tuple.get_item(3).ok()?;
    let reference = (!reference.is_none()).then_some(reference);
    Some((value, topic, key, reference))
}

#[pymethods]
impl Opener {
    #[getter]
    fn keyring(&self, py: Python<'_>) -> Py<PyAny> {
        self.keyring.clone_ref(py)
    }

    #[getter]
    fn cache(&self, py: Python<'_>) -> Py<PyDict> {
        self.cache.clone_ref(py)
    }

    #[new]
    #[pyo3(signature = (keyring, cache, max_bytes, max_age_ms, future_skew_ms, max_lag_ms, audit, clock, system_clock, maker = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        keyring: Py<PyAny>,
        cache: Py<PyDict>,
        max_bytes: usize,
        max_age_ms: i64,
        future_skew_ms: i64,
        max_lag_ms: i64,
        audit: bool,
        clock: Py<PyAny>,
        system_clock: bool,
        maker: Option<MakerParts>,
    ) -> Self {
        let window = Window {
            max_age_ms: max_age_ms as i128,
            future_skew_ms: future_skew_ms as i128,
            max_lag_ms: max_lag_ms as i128,
        };
        Opener {
            keyring,
            cache,
            max_bytes,
            window,
            audit,
            clock,
            system_clock,
            maker: maker.map(|(draft, cls, undecoded)| MessageMaker {
                draft,
                cls,
                undecoded,
            }),
            texts: Mutex::new(Default::default()),
            last_key: Mutex::new(None),
        }
    }

    /// The Python objects this opener holds, for the cyclic collector: a verifier whose clock
    /// (or keyring) refers back to an object that holds the verifier is then freed like any
    /// other cycle (the other objects of the cycle are the ones cleared). The last key entry is
    /// skipped while another call holds its lock: the collector then keeps what it refers to.
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.keyring)?;
        visit.call(&self.cache)?;
        visit.call(&self.clock)?;
        if let Some(maker) = &self.maker {
            visit.call(&maker.draft)?;
            visit.call(&maker.cls)?;
            visit.call(&maker.undecoded)?;
        }
        if let Ok(last) = self.last_key.try_lock() {
            if let Some((kid, key, native)) = &*last {
                visit.call(kid)?;
                visit.call(key)?;
                visit.call(native)?;
            }
        }
        Ok(())
    }

    /// Let go of the last value's key entry (signed_bus._native.refresh calls this when the
    /// keyring changed), so a key removed from the keyring is not kept alive here.
    fn forget_last(&self) {
        let last = self
            .last_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        drop(last); // outside the lock: freeing a key object may run Python code
    }

    /// The VerifiedMessage of a verified value where the opener was given a maker, else
    /// `(header, body, None)`; `(header, body, now)` for an authentic value
    /// outside the freshness window at `now`; a reason code (str) for a refused one; `""` where
    /// the Python path must decide (also for a value, or a key, that is not exactly bytes, or
    /// None for the key: Verifier.verify checks and converts those); None when the key cache
    /// must be refreshed first.
    #[pyo3(signature = (value, topic, key, reference_ms = None))]
    fn open<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
        topic: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        reference_ms: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<PyObject> {
        let python = || Ok(PyString::new(py, "").into_any().unbind());
        let Ok(value) = value.downcast_exact::<PyBytes>() else {
            return python();
        };
        let Some(key) = record_key(key) else {
            return python();
        };
        let key = key.as_ref().map(|key| key.as_bytes());
        let outcome = self.check(py, value.as_bytes(), topic, key, reference_ms)?;
        outcome_object(py, value, self.maker.as_ref(), outcome)
    }

    /// `open` for every item of `items` (tuples `(value, topic, key, reference_ms)`), in order:
    /// the same checks and answers, with the batch's Ed25519 signatures verified on several
    /// threads, the GIL released. An item that is not such a tuple of bytes, any, bytes or
    /// None, any is answered `""` (the Python path decides). None, before any signature is
    /// checked, when the key cache must be refreshed first (then call again).
    fn open_batch<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyList>,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let items: Vec<Option<Item<'py>>> = items.iter().map(item).collect();
        let mut steps: Vec<Option<Step<'_, 'py>>> = Vec::with_capacity(items.len());
        for entry in &items {
            steps.push(match entry {
                None => None,
                Some((value, topic, _, reference)) => {
                    Some(self.before(py, value.as_bytes(), topic, reference.as_ref())?)
                }
            });
        }
        if steps
            .iter()
            .any(|step| matches!(step, Some(Step::Done(Outcome::Refresh))))
        {
            return Ok(None);
        }
        // Ed25519 on every thread without the GIL; HMAC costs less than a hand-over.
        let checks: Vec<Check<'_>> = steps
            .iter()
            .filter_map(|step| match step {
                Some(Step::Sign(pending)) if pending.is_ed25519() => Some(pending.check()),
                _ => None,
            })
            .collect();
        let threads = batch::threads();
        let mut ed25519 = py
            .allow_threads(|| batch::verify_all(&checks, threads))
            .into_iter();
        drop(checks);
        let answers = PyList::empty(py);
        for (step, entry) in steps.into_iter().zip(&items) {
            let (Some(step), Some((value, _, key, _))) = (step, entry) else {
                answers.append(PyString::new(py, ""))?;
                continue;
            };
            let outcome = match step {
                Step::Done(outcome) => outcome,
                Step::Sign(pending) => {
                    let valid = match pending.is_ed25519() {
                        true => ed25519.next().unwrap_or(false),
                        false => pending.check().verify(),
                    };
                    let key = key.as_ref().map(|key| key.as_bytes());
                    self.after(py, pending, key, valid)?
                }
            };
            answers.append(outcome_object(py, value, self.maker.as_ref(), outcome)?)?;
        }
        Ok(Some(answers))
    }

    /// The reason code this opener gives a value ("" when it verifies); None where the Python
    /// path decides or the cache needs a refresh. For the differential tests.
    #[pyo3(signature = (value, topic, key, reference_ms = None))]
    fn reason(
        &self,
        py: Python<'_>,
        value: &Bound<'_, PyBytes>,
        topic: &Bound<'_, PyAny>,
        key: Option<&[u8]>,
        reference_ms: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<&'static str>> {
        Ok(
            match self.check(py, value.as_bytes(), topic, key, reference_ms)? {
                Outcome::Verified(..) => Some(""),
                Outcome::Stale(_, _, _, _, reason) | Outcome::Rejected(reason) => {
                    Some(reason.code())
                }
                Outcome::Python | Outcome::Refresh => None,
            },
        )
    }
}

/// signed_bus._decode.frame_offsets and decode_header_values as a reason: "" when the value
/// frames and decodes, else "malformed" or "unsupported_version". For the differential tests.
#[pyfunction]
fn decode_reason(value: &[u8]) -> &'static str {
    match wire::frame(value) {
        Err(reason) => reason.code(),
        Ok(frame) => match wire::parse_header(&value[frame.p_start..frame.p_end]) {
            Ok(_) => "",
            Err(reason) => reason.code(),
        },
    }
}

/// One claim script call: its KEYS in order, its record blob and the input index of each record.
type PlannedCall<'py> = (Vec<Bound<'py, PyBytes>>, Bound<'py, PyBytes>, Vec<usize>);

/// signed_bus._replay.layout.ClaimPlanner.plan for a planner without ``slot_of``: the same
/// calls, keys and record bytes. None where a row is not what the layout encodes (the Python
/// planner then raises its own error).
#[pyfunction]
fn plan_claims<'py>(
    py: Python<'py>,
    prefix: &str,
    bucket_ms: i64,
    shards: i64,
    limit: usize,
    rows: &Bound<'py, PyList>,
) -> PyResult<Option<Vec<PlannedCall<'py>>>> {
    if bucket_ms <= 0 || shards <= 0 || limit == 0 {
        return Ok(None);
    }
    let mut done: Vec<PlannedCall<'py>> = Vec::new();
    let mut keys: Vec<Bound<'py, PyBytes>> = Vec::new();
    let mut key_ids: std::collections::HashMap<(i64, i64), u16> = std::collections::HashMap::new();
    let mut blob: Vec<u8> = Vec::with_capacity(rows.len().min(limit) * 26);
    let mut indexes: Vec<usize> = Vec::new();
    for (index, row) in rows.iter().enumerate() {
        let Ok(row) = row.downcast_into::<PyTuple>() else {
            return Ok(None);
        };
        if row.len() != 6 {
            return Ok(None);
        }
        let (Ok(issuer), Ok(nonce), Ok(created_at), Ok(topic), Ok(partition), Ok(offset)) = (
            row.get_item(0)?.downcast_into::<PyString>(),
            row.get_item(1)?.downcast_into::<PyBytes>(),
            row.get_item(2)?.extract::<i64>(),
            row.get_item(3)?.downcast_into::<PyString>(),
            row.get_item(4)?.extract::<i64>(),
            row.get_item(5)?.extract::<i64>(),
        ) else {
            return Ok(None);
        };
        let (Ok(issuer), Ok(topic)) = (issuer.to_str(), topic.to_str()) else {
            return Ok(None);
        };
        let Some((field, shard_bytes, position)) =
            wire::claim_digests(issuer, nonce.as_bytes(), topic, partition, offset)
        else {
            return Ok(None);
        };
        let bucket = created_at.div_euclid(bucket_ms);
        let shard = i64::from(shard_bytes) % shards;
        if indexes.len() >= limit {
            let full = PyBytes::new(py, &blob);
            done.push((
                std::mem::take(&mut keys),
                full,
                std::mem::take(&mut indexes),
            ));
            key_ids.clear();
            blob.clear();
        }
        let key_id = match key_ids.get(&(bucket, shard)) {
            Some(id) => *id,
            None => {
                let Ok(id) = u16::try_from(keys.len()) else {
                    return Ok(None);
                };
                keys.push(PyBytes::new(
                    py,
                    format!("{prefix}:n:{{{bucket}}}:{shard}").as_bytes(),
                ));
                key_ids.insert((bucket, shard), id);
                id
            }
        };
        blob.extend_from_slice(&key_id.to_be_bytes());
        blob.extend_from_slice(&field);
        blob.extend_from_slice(&position);
        indexes.push(index);
    }
    if !indexes.is_empty() {
        done.push((keys, PyBytes::new(py, &blob), indexes));
    }
    Ok(Some(done))
}

#[pymodule]
fn signed_bus_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("ABI_VERSION", crate::ABI_VERSION)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TAG", wire::TAG)?;
    m.add("MAX_PROTECTED_BYTES", wire::MAX_PROTECTED_BYTES)?;
    m.add_class::<NativeKey>()?;
    m.add_class::<Opener>()?;
    m.add_class::<CheckedHeader>()?;
    m.add_class::<crate::py_seal::Sealer>()?;
    m.add_function(wrap_pyfunction!(crate::py_seal::drop_nonces, m)?)?;
    m.add_function(wrap_pyfunction!(crate::py_seal::check_map_keys, m)?)?;
    m.add_function(wrap_pyfunction!(decode_reason, m)?)?;
    m.add_function(wrap_pyfunction!(plan_claims, m)?)?;
    Ok(())
}
