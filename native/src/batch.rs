//! Signature checks of a whole batch on several threads (Ed25519 is the only costly one).
//!
//! Every check is independent: the verdicts come back in input order whatever the split, and
//! each is what `Check::verify` gives alone.

use std::num::NonZeroUsize;
use std::sync::OnceLock;

use crate::crypto::Material;
use crate::wire;

/// One signature to check: the key and the three pieces of the value it covers.
pub struct Check<'a> {
    pub material: &'a Material,
    pub protected: &'a [u8],
    pub body: &'a [u8],
    pub signature: &'a [u8],
}

impl Check<'_> {
    /// Whether the signature is valid over the signed message of protected and body.
    pub fn verify(&self) -> bool {
        let lengths = wire::lengths(self.protected, self.body);
        let parts = wire::signed_parts(self.protected, self.body, &lengths);
        self.material.verify(&parts, self.signature)
    }
}

/// Fewer checks than this per thread are not worth a thread (a spawn costs about as much as
/// a few Ed25519 verifications).
pub const MIN_PER_THREAD: usize = 8;

/// The threads a batch may use: the machine's parallelism, read once.
pub fn threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
    })
}

/// The verdict of every check, in input order, using up to `threads` threads (the caller's
/// among them).
pub fn verify_all(checks: &[Check<'_>], threads: usize) -> Vec<bool> {
    let threads = threads.min(checks.len() / MIN_PER_THREAD).max(1);
    if threads == 1 {
        return checks.iter().map(Check::verify).collect();
    }
    let size = checks.len().div_ceil(threads);
    let mut chunks = checks.chunks(size);
    let first = chunks.next().unwrap_or(&[]);
    std::thread::scope(|scope| {
        let others: Vec<_> = chunks
            .map(|chunk| scope.spawn(move || chunk.iter().map(Check::verify).collect::<Vec<_>>()))
            .collect();
        let mut verdicts: Vec<bool> = first.iter().map(Check::verify).collect();
        for other in others {
            match other.join() {
                Ok(part) => verdicts.extend(part),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        verdicts
    })
}
