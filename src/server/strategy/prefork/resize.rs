//! SIGTTIN and SIGTTOU: grow or shrink the prefork pool's spare bounds by
//! one while it runs (Apache's convention).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::server::options::PoolOptions;
use crate::server::wakeup::Wakeup;
use crate::Result;

/// SIGTTIN/SIGTTOU handlers for the duration of `serve_forever`.
pub(super) struct Resize {
    grow: Arc<AtomicBool>,
    shrink: Arc<AtomicBool>,
    ids: Vec<signal_hook::SigId>,
}

impl Resize {
    pub(super) fn install(wakeup: &Wakeup, enabled: bool) -> Result<Resize> {
        let mut r = Resize {
            grow: Arc::new(AtomicBool::new(false)),
            shrink: Arc::new(AtomicBool::new(false)),
            ids: Vec::new(),
        };
        if !enabled {
            return Ok(r);
        }
        use signal_hook::consts::{SIGTTIN, SIGTTOU};
        for (sig, flag) in [(SIGTTIN, &r.grow), (SIGTTOU, &r.shrink)] {
            r.ids.push(signal_hook::flag::register(sig, flag.clone())?);
            r.ids.push(signal_hook::low_level::pipe::register(
                sig,
                wakeup.sender()?,
            )?);
        }
        Ok(r)
    }

    pub(super) fn apply(&self, c: &mut PoolOptions) {
        if self.grow.swap(false, Ordering::SeqCst) {
            c.min_spare = (c.min_spare + 1).min(c.max_workers);
            c.max_spare = c.max_spare.max(c.min_spare);
            tracing::info!(
                min_spare = c.min_spare,
                max_spare = c.max_spare,
                "SIGTTIN: pool grown"
            );
        }
        if self.shrink.swap(false, Ordering::SeqCst) {
            c.min_spare = c.min_spare.saturating_sub(1);
            c.max_spare = c.max_spare.saturating_sub(1).max(c.min_spare).max(1);
            tracing::info!(
                min_spare = c.min_spare,
                max_spare = c.max_spare,
                "SIGTTOU: pool shrunk"
            );
        }
    }
}

impl Drop for Resize {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}
