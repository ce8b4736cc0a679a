//! Nonces for the sealer's default source: the OS CSPRNG read a block at a time.
//!
//! One getrandom call per 256 nonces instead of one per message. Each nonce is handed out once
//! (the pool sits behind a lock; the caller holds the GIL anyway). A forked child must not hand
//! out the nonces its parent still holds: signed_bus/_native.py calls [`drop_all`] in the child
//! (os.register_at_fork), as the pure path drops its own pool.

use std::sync::Mutex;

use crate::wire::NONCE_BYTES;

/// Nonces per OS read.
pub const POOL_NONCES: usize = 256;
const POOL_BYTES: usize = NONCE_BYTES * POOL_NONCES;

struct Pool {
    block: [u8; POOL_BYTES],
    /// Offset of the next unused nonce; POOL_BYTES when the block is spent.
    next: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    block: [0; POOL_BYTES],
    next: POOL_BYTES,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    // A panic cannot leave the pool half-written in a way that reuses a nonce: `next` only
    // moves forward after the copy, and a refill replaces the whole block.
    POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A fresh 16-byte nonce; None if the OS random source fails (the caller then takes the
/// Python path, which raises the OS error).
pub fn take() -> Option<[u8; NONCE_BYTES]> {
    let mut pool = pool();
    if pool.next >= POOL_BYTES {
        getrandom::getrandom(&mut pool.block).ok()?;
        pool.next = 0;
    }
    let start = pool.next;
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&pool.block[start..start + NONCE_BYTES]);
    // Spent nonces are wiped: the block never holds one already handed out.
    pool.block[start..start + NONCE_BYTES].fill(0);
    pool.next = start + NONCE_BYTES;
    Some(nonce)
}

/// Forget every unused nonce (a forked child), so the next one comes from a new OS read.
pub fn drop_all() {
    let mut pool = pool();
    pool.block.fill(0);
    pool.next = POOL_BYTES;
}

/// Unused nonces left in the pool (for the tests).
pub fn left() -> usize {
    (POOL_BYTES - pool().next) / NONCE_BYTES
}
