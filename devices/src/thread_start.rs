//! A hook every device thread calls first thing, with its name, so the VMM
//! can confine it (seccomp, src/seccomp.rs) before it handles guest data,
//! without this crate knowing the policy. Without a hook it does nothing.

use std::sync::OnceLock;

type Hook = Box<dyn Fn(&str) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Set the hook (once per process; later calls are ignored).
pub fn set_hook(hook: Hook) {
    let _ = HOOK.set(hook);
}

/// Called by a device thread as it starts.
pub fn started(name: &str) {
    if let Some(h) = HOOK.get() {
        h(name);
    }
}
