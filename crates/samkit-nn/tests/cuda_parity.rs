use samkit_cuda::compile::{compile, prebuilt_name, Target};
use samkit_nn::cuda::NN_KERNELS;

#[test]
fn nn_kernels_compile_clean_for_sm80_and_sm90() {
    let require = std::env::var("SAMKIT_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    let ready = samkit_cuda::env::ensure_nvrtc().and_then(|_| samkit_cuda::env::include_dir());
    if let Err(e) = ready {
        if require {
            panic!("SAMKIT_REQUIRE_NVRTC=1 but {e}");
        }
        println!("skip: NVRTC not available ({e}); SAMKIT_REQUIRE_NVRTC=1 makes this a failure");
        return;
    }
    let keep = std::env::var_os("SAMKIT_WRITE_CUBINS").map(std::path::PathBuf::from);
    for arch in [80u32, 90] {
        let c = compile(NN_KERNELS, Target::Cubin(arch)).unwrap();
        println!("{}", c.log);
        c.check_clean().unwrap();
        if let Some(dir) = &keep {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(prebuilt_name(NN_KERNELS, arch)), &c.image).unwrap();
        }
    }
}
