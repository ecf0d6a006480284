//! The one process setting the workspace's allocator needs.
//!
//! Every binary declares mimalloc as its `#[global_allocator]` in its own `main.rs` (a
//! library must not choose its users' allocator): a push allocates and frees many small
//! buffers, often on one task and freed on another, and glibc's malloc took ~13% of the
//! gateway's CPU (docs/ARCHITECTURE.md, "Allocator").

/// Call first thing in `main`. Turns transparent huge pages off for this process: on a
/// host with THP set to `always`, mimalloc's arenas are backed by 2 MiB pages and the
/// gateway's memory per idle stream grew from 24 to 41 KiB. Where the kernel refuses
/// (not Linux, or a sandbox), THP stays as the host set it; that costs memory, nothing
/// else.
pub fn init() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        eprintln!("could not turn transparent huge pages off ({e}); memory per stream may be higher");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn init_turns_transparent_huge_pages_off_for_the_process() {
        super::init();
        let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        // Kernels since 5.0 report it; without the line there is nothing to check.
        let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) else { return };
        assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
    }
}
