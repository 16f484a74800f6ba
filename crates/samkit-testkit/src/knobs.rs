//! The environment variables of the emulator: test plumbing only (they pick the emulated
//! schedule, the emulated device's size, the sanitizer build and whether a missing emulator
//! fails the run; none reaches the libraries under test).

/// `SAMKIT_FAKE_SEED=<n>` picks the emulated schedule of threads, warps and blocks (read by
/// `driver.cpp`; 1 when unset, 0 runs everything in order).
pub const SEED: &str = "SAMKIT_FAKE_SEED";

/// `SAMKIT_FAKE_SMS=<n>`: the emulated device's SM count (read by `driver.cpp`; 132, an
/// H200's, when unset).
pub const SMS: &str = "SAMKIT_FAKE_SMS";

/// `SAMKIT_FAKE_SANITIZE=1` builds the kernels and the fake libraries with
/// `-fsanitize=address,undefined` into their own cache directories; the test binary must then
/// run with the sanitizer runtimes preloaded (`scripts/test-sanitized.sh`).
pub const SANITIZE: &str = "SAMKIT_FAKE_SANITIZE";

/// `SAMKIT_REQUIRE_EMULATION=1` turns a missing C++ compiler or NVRTC into a failure instead
/// of a skip (CI sets it where the emulator must run).
pub const REQUIRE_EMULATION: &str = "SAMKIT_REQUIRE_EMULATION";

fn is_one(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Whether this run builds the sanitized emulator ([`SANITIZE`]).
pub fn sanitize() -> bool {
    is_one(SANITIZE)
}

/// Whether a missing emulator must fail the test run ([`REQUIRE_EMULATION`]).
pub fn required() -> bool {
    is_one(REQUIRE_EMULATION)
}

/// Whether the emulator runs threads, warps and blocks in order ([`SEED`] is 0): a race that
/// only a shuffled schedule shows cannot show then.
pub fn in_order() -> bool {
    std::env::var(SEED).is_ok_and(|v| v.trim() == "0")
}

/// Whether the emulated SM count was set ([`SMS`]) rather than an H200's.
pub fn sms_overridden() -> bool {
    std::env::var_os(SMS).is_some()
}
