//! Nonces for the sealer's default source: ChaCha20 keyed from the OS CSPRNG.
//!
//! Each key is 32 bytes from one getrandom call and serves [`POOL_NONCES`] nonces; the next
//! nonce after that comes from a new key. A nonce costs a few ChaCha20 rounds in user space
//! instead of its share of a kernel getrandom read of 4 KiB (the former pool). Each nonce is
//! handed out once (the generator sits behind a lock; the caller holds the GIL anyway).
//! A forked child must not hand out the nonces its parent would: signed_bus/_native.py calls
//! [`drop_all`] in the child (os.register_at_fork), as the pure path drops its own pool, and the
//! child's next nonce comes from a key of its own.

use std::sync::Mutex;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::wire::NONCE_BYTES;

/// Nonces per OS read (per ChaCha20 key). Small on purpose: a fork that bypasses Python's
/// at-fork hooks (a fork from C, a restored snapshot) copies the generator, and parent and child
/// then hand out the same nonces until the next key; 256 bounds that as the former 4 KiB pool
/// did. A new key costs one 32-byte getrandom, about 2 ns per nonce at this size.
pub const POOL_NONCES: usize = 256;

struct Pool {
    /// The generator of the current key; None before the first nonce and after [`drop_all`].
    rng: Option<ChaCha20Rng>,
    /// Nonces the current key still serves.
    left: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool { rng: None, left: 0 });

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // A panic cannot make a nonce repeat: the generator only moves forward, and a new key
    // replaces the whole generator.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh 16-byte nonce; None if the OS random source fails (the caller then takes the
/// Python path, which raises the OS error).
pub fn take() -> Option<[u8; NONCE_BYTES]> {
    let mut pool = pool();
    if pool.left == 0 || pool.rng.is_none() {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).ok()?;
        pool.rng = Some(ChaCha20Rng::from_seed(seed));
        pool.left = POOL_NONCES;
    }
    let mut nonce = [0u8; NONCE_BYTES];
    pool.rng.as_mut()?.fill_bytes(&mut nonce);
    pool.left -= 1;
    Some(nonce)
}

/// Forget the current key (a forked child), so the next nonce comes from a new OS read.
pub fn drop_all() {
    let mut pool = pool();
    pool.rng = None;
    pool.left = 0;
}

/// Nonces the current key still serves (for the tests).
pub fn left() -> usize {
    let pool = pool();
    if pool.rng.is_some() {
        pool.left
    } else {
        0
    }
}
