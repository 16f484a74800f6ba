//! Shared by the GPU parity tests (`tests/parity.rs`, real device) and their CPU emulation
//! (`tests/emulated.rs`, the fake driver of samkit-testkit).
#![allow(dead_code)]
pub mod parity;
pub mod resume;

/// The parity tests, each on the device `$dev()` returns (`None`: skipped, after one line).
#[macro_export]
macro_rules! parity_tests {
    ($dev:path) => {
        #[test]
        fn norm_and_dot_match_cpu() {
            if let Some(d) = $dev() {
                common::parity::norm_and_dot_match_cpu(&d);
            }
        }
        #[test]
        fn reductions_are_deterministic_whatever_the_grid() {
            if let Some(d) = $dev() {
                common::parity::reductions_are_deterministic(&d);
            }
        }
        #[test]
        fn fisher_accumulation_is_bit_identical() {
            if let Some(d) = $dev() {
                common::parity::fisher_matches_cpu(&d);
            }
        }
        #[test]
        fn top_k_masks_are_identical() {
            if let Some(d) = $dev() {
                common::parity::top_k_matches_cpu(&d);
            }
        }
        #[test]
        fn ssam_d_masks_are_identical() {
            if let Some(d) = $dev() {
                common::parity::ssam_d_masks_match_cpu(&d);
            }
        }
        #[test]
        fn every_rule_matches_cpu() {
            if let Some(d) = $dev() {
                common::parity::every_rule_matches_cpu(&d);
            }
        }
        #[test]
        fn every_base_optimizer_matches_cpu() {
            if let Some(d) = $dev() {
                common::parity::every_base_optimizer_matches_cpu(&d);
            }
        }
        #[test]
        fn non_finite_gradients_skip_and_restore_exactly() {
            if let Some(d) = $dev() {
                common::parity::non_finite_gradients_skip_exactly(&d);
            }
        }
        #[test]
        fn unsynced_outcomes_surface_from_second_step() {
            if let Some(d) = $dev() {
                common::parity::unsynced_outcomes_surface_from_second_step(&d);
            }
        }
        #[test]
        fn schedules_read_arrived_counters_without_event_tracking() {
            if let Some(d) = $dev() {
                common::parity::schedules_read_arrived_counters_without_event_tracking(&d);
            }
        }
        #[test]
        fn resnet18_and_issue_sizes_match_cpu() {
            if let Some(d) = $dev() {
                common::parity::resnet18_matches_cpu(&d);
            }
        }
        #[test]
        fn bf16_step_within_one_ulp() {
            if let Some(d) = $dev() {
                common::parity::half_precision_step::<half::bf16>(&d, 1.0 / 128.0);
            }
        }
        #[test]
        fn f16_step_within_one_ulp() {
            if let Some(d) = $dev() {
                common::parity::half_precision_step::<half::f16>(&d, 1.0 / 1024.0);
            }
        }
        #[test]
        fn state_resume_is_bit_identical() {
            if let Some(d) = $dev() {
                common::resume::resume_is_bit_identical(&d);
            }
        }
        #[test]
        fn state_files_interchange_with_cpu() {
            if let Some(d) = $dev() {
                common::resume::states_interchange_with_cpu(&d);
            }
        }
        #[test]
        fn state_errors_match_cpu() {
            if let Some(d) = $dev() {
                common::resume::state_errors(&d);
            }
        }
        #[test]
        fn closure_form_matches_cpu() {
            if let Some(d) = $dev() {
                common::parity::closure_form_matches_cpu(&d);
            }
        }
    };
}
