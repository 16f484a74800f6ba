//! The allocation recorder of `samkit_testkit::fuzz`, installed as this binary's allocator as
//! the fuzz tests of samkit-core, samkit-nn and samkit-data install it.
use samkit_testkit::fuzz::{largest_allocation, Recording};

#[global_allocator]
static ALLOC: Recording = Recording;

#[test]
fn the_recorder_sees_a_large_allocation() {
    const BIG: usize = 10 << 20;
    let (v, largest) = largest_allocation(|| vec![1u8; BIG]);
    assert!(largest >= BIG && v.len() == BIG, "{largest}");
    let (_, nothing) = largest_allocation(|| ());
    assert_eq!(nothing, 0);
}
