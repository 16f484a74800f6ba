//! What the timing examples share (`mod common;` in each; a directory without `main.rs`, so
//! cargo does not take it for an example).

/// CPU time of all threads of this process (Linux schedstat), in seconds.
pub fn cpu_time() -> f64 {
    let mut ns = 0u64;
    if let Ok(rd) = std::fs::read_dir("/proc/self/task") {
        for e in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) {
                ns += s
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ns as f64 * 1e-9
}
