//! Shared by the CPU vs CUDA parity tests of samkit-nn on a real device (`tests/cuda_parity.rs`)
//! and on the CPU emulation of one (`tests/emulated.rs`: the fake driver, cuBLAS and cuDNN of
//! samkit-testkit, shared with samkit-cuda's tests).
#![allow(dead_code)]
pub mod parity;

/// The parity tests, each in the [`parity::Env`] that `$env()` returns (`None`: skipped, after
/// one line).
#[macro_export]
macro_rules! nn_parity_tests {
    ($env:path) => {
        #[test]
        fn conv2d_forward_backward_and_per_sample_squares_match_cpu() {
            if let Some(e) = $env() {
                common::parity::conv2d_forward_backward_and_per_sample_squares_match_cpu(&e);
            }
        }
        #[test]
        fn conv2d_backward_filter_every_algorithm_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::conv2d_backward_filter_every_algorithm_matches_cpu(&e);
            }
        }
        #[test]
        fn conv2d_per_sample_squares_are_the_same_in_chunks_of_one() {
            if let Some(e) = $env() {
                common::parity::conv2d_per_sample_squares_are_the_same_in_chunks_of_one(&e);
            }
        }
        #[test]
        fn batch_norm_matches_cpu_in_every_mode() {
            if let Some(e) = $env() {
                common::parity::batch_norm_matches_cpu_in_every_mode(&e);
            }
        }
        #[test]
        fn relu_add_activations_and_pooling_match_cpu() {
            if let Some(e) = $env() {
                common::parity::relu_add_activations_and_pooling_match_cpu(&e);
            }
        }
        #[test]
        fn linear_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::linear_matches_cpu(&e);
            }
        }
        #[test]
        fn device_loss_matches_samkit_core() {
            if let Some(e) = $env() {
                common::parity::device_loss_matches_samkit_core(&e);
            }
        }
        #[test]
        fn mlp_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::mlp_matches_cpu(&e);
            }
        }
        #[test]
        fn resnet18_forward_backward_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::resnet18_forward_backward_matches_cpu(&e);
            }
        }
        #[test]
        fn resnet18_per_sample_fisher_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::resnet18_per_sample_fisher_matches_cpu(&e);
            }
        }
        #[test]
        fn sam_step_through_gpu_optimizer_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::sam_step_through_gpu_optimizer_matches_cpu(&e);
            }
        }
        #[test]
        fn device_distillation_term_matches_cpu() {
            if let Some(e) = $env() {
                common::parity::device_distillation_term_matches_cpu(&e);
            }
        }
        #[test]
        fn device_ema_update_is_the_cpu_update_bit_for_bit() {
            if let Some(e) = $env() {
                common::parity::device_ema_update_is_the_cpu_update_bit_for_bit(&e);
            }
        }
    };
}
