//! `Header`: the checked protected header of a verified value, read like the pure path's map.
//!
//! The pure path hands a `VerifiedMessage` the header as a dict (eleven items, the parents in a
//! list). The opener hands it this object instead: one allocation holding the values in Rust,
//! each converted when read (`header["iss"]`, `header.get("exp")`), so an open builds two
//! objects instead of about fifteen. It holds no reference a cycle could pass through (its
//! strings are the opener's), so the collector does not track it (no `__traverse__`).

use pyo3::exceptions::PyKeyError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};

use crate::wire::{self, Header};

/// The header's six texts, in `wire::KEYS` order (alg, kid, iss, mdl, cty, tpc).
pub(crate) type HeldTexts = [Py<PyString>; 6];

/// A checked protected header: `header[key]`, `header.get(key, default=None)`, `key in
/// header` and `len(header)` answer as the pure path's dict does (the parents as a tuple).
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

    /// The value under `key`, or None when the header has no such key.
    fn value<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(index) = wire::KEYS.iter().position(|name| *name == key) else {
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
    fn __getitem__<'py>(&self, py: Python<'py>, key: &str) -> PyResult<Bound<'py, PyAny>> {
        match self.value(py, key)? {
            Some(value) => Ok(value),
            None => Err(PyKeyError::new_err(key.to_owned())),
        }
    }

    #[pyo3(signature = (key, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &str,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match self.value(py, key)? {
            Some(value) => value,
            None => default.unwrap_or_else(|| py.None().into_bound(py)),
        })
    }

    fn __contains__(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        Ok(self.value(py, key)?.is_some())
    }

    fn __len__(&self) -> usize {
        if self.exp.is_some() {
            wire::KEYS.len()
        } else {
            wire::KEYS.len() - 1
        }
    }
}
