//! `Verifier.verify` in one native call: the base class signed_bus/_verifier.py gives Verifier
//! when the extension is loaded (the pure-Python base, `_VerifyEntry`, has the same method).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::py::Opener;

/// The base of signed_bus Verifier on the native path. It holds nothing: the verifier's
/// `_opener` slot (an Opener, or None on the pure path) and its `_verify_other` method decide
/// everything but the common case, a value the opener verified.
#[pyclass(subclass, frozen, module = "signed_bus_native")]
pub struct VerifyEntry;

#[pymethods]
impl VerifyEntry {
    /// Takes and ignores the subclass's constructor arguments (its `__init__` reads them).
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn new(_args: &Bound<'_, PyAny>, _kwargs: Option<&Bound<'_, PyAny>>) -> Self {
        VerifyEntry
    }

    /// Verify a record value read from ``topic`` with record ``key``.
    ///
    /// Returns the verified message; raises a VerificationError subclass whose ``reason`` says
    /// which check failed. A ``key`` that is not bytes-like or None is a caller bug:
    /// ConfigurationError.
    #[pyo3(signature = (value, *, topic, key, reference_ms = None))]
    fn verify<'py>(
        slf: &Bound<'py, Self>,
        value: &Bound<'py, PyAny>,
        topic: &Bound<'py, PyAny>,
        key: &Bound<'py, PyAny>,
        reference_ms: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<PyObject> {
        let py = slf.py();
        let opener = slf.getattr(intern!(py, "_opener"))?;
        let opened = match opener.downcast::<Opener>() {
            Ok(opener) => {
                let (opened, verified) =
                    opener
                        .get()
                        .open_value(py, value, topic, key, reference_ms)?;
                if verified {
                    return Ok(opened);
                }
                opened.into_bound(py)
            }
            // The pure path: Python decides.
            Err(_) if opener.is_none() => PyString::new(py, "").into_any(),
            // An opener of another build of the extension (benchmarks/bench_builds.py loads
            // two side by side): the same call through Python. Its answer for a verified value
            // is the message; every other answer is a str, a tuple or None.
            Err(_) => {
                let opened =
                    opener.call_method1(intern!(py, "open"), (value, topic, key, reference_ms))?;
                if !(opened.is_none()
                    || opened.is_instance_of::<PyString>()
                    || opened.is_instance_of::<PyTuple>())
                {
                    return Ok(opened.unbind());
                }
                opened
            }
        };
        let verify_other = slf.getattr(intern!(py, "_verify_other"))?;
        Ok(verify_other
            .call1((value, topic, key, reference_ms, opened))?
            .unbind())
    }
}
