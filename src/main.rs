//! The `edge` binary: everything lives in the library; this only picks the allocator and checks
//! that the CPU runs what the build was compiled for.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Built for x86-64-v3 (.cargo/config.toml): say so rather than die of an illegal instruction.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2"))]
    if !(std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("bmi1")
        && std::is_x86_feature_detected!("bmi2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("lzcnt")
        && std::is_x86_feature_detected!("movbe")
        && std::is_x86_feature_detected!("f16c"))
    {
        eprintln!(
            "edge: this build needs an x86-64-v3 CPU (AVX2, BMI1/2, FMA, LZCNT, MOVBE, F16C); rebuild with \
             RUSTFLAGS=\"-C target-cpu=x86-64-v2\" cargo build --release"
        );
        return std::process::ExitCode::from(2);
    }
    edge::cli::main()
}
