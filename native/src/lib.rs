//! The native hot path of signed-bus: envelope v1 seal and open, one call each way.
//!
//! Safe Rust only. The pure-Python modules of signed-bus stay the reference: `wire` mirrors
//! signed_bus/_decode.py and signed_bus/_envelope.py rule by rule, `crypto` signed_bus/_keys.py.
//! The Python module (feature `python`, which maturin turns on) is in `py`.
#![forbid(unsafe_code)]

pub mod batch;
pub mod body;
pub mod crypto;
pub mod nonces;
pub mod seal;
pub mod wire;

#[cfg(feature = "python")]
mod py;
#[cfg(feature = "python")]
mod py_header;
#[cfg(feature = "python")]
mod py_seal;

/// Bumped whenever the Python-facing interface changes; signed_bus/_native.py refuses a module
/// with another number.
pub const ABI_VERSION: u32 = 14;

#[cfg(test)]
mod tests;
