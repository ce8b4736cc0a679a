//! `Header`: the checked protected header of a verified value, read like the pure path's map.
//!
//! The pure path hands a `VerifiedMessage` the header as a dict (eleven items, the parents in a
//! list). The opener hands it this object instead: one allocation holding the values in Rust,
//! each converted when read (`header["iss"]`, `header.get("exp")`), so an open builds two
//! objects instead of about fifteen. It holds no reference a cycle could pass through (its
//! strings are the opener's), so the collector does not track it (no `__traverse__`).

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyIterator, PyList, PyString, PyTuple};

use crate::wire::{self, Header};

/// The header's six texts, in `wire::KEYS` order (alg, kid, iss, mdl, cty, tpc), shared with
/// the opener (and the other messages of values with the same texts).
pub(crate) type HeldTexts = std::sync::Arc<[Py<PyString>; 6]>;

/// A checked protected header: `header[key]`, `header.get(key, default=None)`, `key in
/// header`, `len(header)`, `keys()` and iteration answer as the pure path's dict does (the
/// parents as a tuple; any key that is not one of its texts is absent).
#[pyclass(frozen, module = "signed_bus_native", name = "Header")]
pub struct CheckedHeader {
    texts: HeldTexts,
    rkd: Option<[u8; wire::DIGEST_BYTES]>,
    iat: u64,
    nce: [u8; wire::NONCE_BYTES],
    par: Vec<[u8; wire::DIGEST_BYTES]>,
    exp: Option<u64>,
}

impl CheckedHeader {
    /// None where a field does not have its checked length (never for a header
    /// `wire::parse_header` accepted).
    pub(crate) fn new(h: &Header<'_>, texts: HeldTexts) -> Option<Self> {
        let rkd = match h.rkd {
            None => None,
            Some(rkd) => Some(rkd.try_into().ok()?),
        };
        let mut par = Vec::with_capacity(h.par.len());
        for parent in &h.par {
            par.push((*parent).try_into().ok()?);
        }
        Some(CheckedHeader {
            texts,
            rkd,
            iat: h.iat,
            nce: h.nce.try_into().ok()?,
            par,
            exp: h.exp,
        })
    }

    /// The value under `key`, or None when the header has no such key (as for a dict: any
    /// object that is not one of its text keys, a non-text one included, is just absent).
    fn value<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Ok(text) = key.downcast::<PyString>() else {
            return Ok(None);
        };
        let Ok(text) = text.to_str() else {
            return Ok(None); // a lone surrogate: no key of the header
        };
        let Some(index) = wire::KEYS.iter().position(|name| *name == text) else {
            return Ok(None);
        };
        Ok(Some(match index {
            wire::K_ALG..=wire::K_TPC => self.texts[index].bind(py).clone().into_any(),
            wire::K_RKD => match &self.rkd {
                None => py.None().into_bound(py),
                Some(rkd) => PyBytes::new(py, rkd).into_any(),
            },
            wire::K_IAT => self.iat.into_pyobject(py)?.into_any(),
            wire::K_NCE => PyBytes::new(py, &self.nce).into_any(),
            wire::K_PAR => {
                PyTuple::new(py, self.par.iter().map(|p| PyBytes::new(py, p)))?.into_any()
            }
            _ => match self.exp {
                None => return Ok(None),
                Some(exp) => exp.into_pyobject(py)?.into_any(),
            },
        }))
    }
}

#[pymethods]
impl CheckedHeader {
    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.value(py, key)? {
            Some(value) => Ok(value),
            None => Err(PyKeyError::new_err(key.clone().unbind())),
        }
    }

    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.value(py, key)? {
            Some(value) => value,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    fn __contains__<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<bool> {
        Ok(self.value(py, key)?.is_some())
    }

    /// The header's keys, in the wire order (``exp`` only when present): ``dict(header)``
    /// gives the pure path's map.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, &wire::KEYS[..self.__len__()])
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        self.keys(py)?.into_any().try_iter()
    }

    fn __len__(&self) -> usize {
        if self.exp.is_some() {
            wire::KEYS.len()
        } else {
            wire::KEYS.len() - 1
        }
    }
}
