//! With the `cuda` feature, compiles each of [`KERNELS`] to PTX in `OUT_DIR` (embedded by
//! `src/model/nf4.rs`, `src/model/fused.rs` and `src/model/decode.rs`). nvcc comes from
//! `$CUDA_HOME/bin` or `PATH`; the architecture from `CUDA_COMPUTE_CAP` (`90` → `sm_90`, the
//! default). Without the feature it does nothing.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The CUDA sources under `kernels/`, by name.
const KERNELS: [&str; 3] = ["decode", "nf4", "softmax"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    for k in KERNELS {
        println!("cargo:rerun-if-changed=kernels/{k}.cu");
    }
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = env::var_os("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("bin/nvcc"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for k in KERNELS {
        let src = format!("kernels/{k}.cu");
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", &format!("-arch=sm_{cap}"), &src, "-o"])
            .arg(out_dir.join(format!("{k}.ptx")))
            .status()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        if !status.success() {
            panic!("{} failed to compile {src} ({status})", nvcc.display());
        }
    }
}
