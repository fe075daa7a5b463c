//! Named points in the code where a test can run its own code, to force an
//! interleaving that timing alone would rarely produce (a GC landing in
//! the middle of a branch creation, say).
//!
//! A point costs one relaxed atomic load while no test has set a hook on
//! any point. A hook gets the context the point passes (a tenant id, for
//! example), so a test can act only on its own objects while other tests
//! of the same process run.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

type Hook = Arc<dyn Fn(&str) + Send + Sync>;

static ANY_SET: AtomicBool = AtomicBool::new(false);

fn hooks() -> &'static Mutex<HashMap<&'static str, Hook>> {
    static HOOKS: OnceLock<Mutex<HashMap<&'static str, Hook>>> = OnceLock::new();
    HOOKS.get_or_init(Default::default)
}

/// Run the hook set on `name`, if any, with `context`.
pub fn hit(name: &'static str, context: &str) {
    if !ANY_SET.load(Ordering::Relaxed) {
        return;
    }
    let hook = hooks()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned();
    if let Some(hook) = hook {
        hook(context);
    }
}

/// Set the hook of `name` (replacing any), for tests.
pub fn set(name: &'static str, hook: impl Fn(&str) + Send + Sync + 'static) {
    hooks()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name, Arc::new(hook));
    ANY_SET.store(true, Ordering::Relaxed);
}

/// Remove the hook of `name`.
pub fn clear(name: &'static str) {
    hooks()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn hooks_run_with_their_context_until_cleared() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        hit("test-point", "nobody listens");
        set("test-point", |context| {
            if context == "mine" {
                SEEN.fetch_add(1, Ordering::SeqCst);
            }
        });
        hit("test-point", "mine");
        hit("test-point", "theirs");
        hit("other-point", "mine");
        clear("test-point");
        hit("test-point", "mine");
        assert_eq!(SEEN.load(Ordering::SeqCst), 1);
    }
}
