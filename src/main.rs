//! The `edge` binary: everything lives in the library; this only picks the allocator.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Built for x86-64-v3 (.cargo/config.toml): say so rather than die of an illegal instruction.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("bmi2")) {
        eprintln!(
            "edge: this build needs an x86-64-v3 CPU (AVX2, BMI2); rebuild with \
             RUSTFLAGS=\"-C target-cpu=x86-64-v2\" cargo build --release"
        );
        return std::process::ExitCode::from(2);
    }
    edge::cli::main()
}
