//! A stop request for long loops (sweeps, traces, training): a face that catches an interrupt
//! (Python's Ctrl-C) asks for a stop, and the loop ends at its next step boundary with
//! [`Error::Interrupted`](crate::Error::Interrupted) instead of running to the end.
//!
//! One process-wide flag, because the request comes from outside the call (a signal) and the
//! loops already report progress at exactly the boundaries where stopping is clean.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Asks the running loop to stop at its next step boundary.
pub fn request() {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Withdraws a request (a face calls it before starting a loop).
pub fn clear() {
    REQUESTED.store(false, Ordering::SeqCst);
}

/// `Err(Interrupted)` when a stop was requested. The request stands until a face clears it,
/// so every loop running under it stops (the lab trains several runs at once).
pub fn check() -> crate::Result<()> {
    if REQUESTED.load(Ordering::SeqCst) {
        return Err(crate::Error::Interrupted);
    }
    Ok(())
}
