//! Links AO_malloc (libatomic_ops_gpl, Debian package `libatomic-ops-dev`) when it is
//! installed, and records the compiler version for the report header.
//!
//! AO_malloc is optional so that the bench still builds where the package is missing: the
//! tables then say "not installed" for it. Set `AO_LIB_DIR` to look in a non-standard place,
//! or `BENCH_NO_AO=1` to build without it (to check that configuration).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(have_ao)");
    println!("cargo::rerun-if-env-changed=AO_LIB_DIR");
    println!("cargo::rerun-if-env-changed=BENCH_NO_AO");
    println!("cargo::rerun-if-changed=build.rs");

    let skip = env::var_os("BENCH_NO_AO").is_some_and(|v| v == "1");
    match find_ao().filter(|_| !skip) {
        Some((dir, kind)) => {
            println!("cargo::rustc-link-search=native={}", dir.display());
            // AO_malloc's free lists call AO_pause, which lives in the non-GPL part.
            println!("cargo::rustc-link-lib={kind}=atomic_ops_gpl");
            println!("cargo::rustc-link-lib={kind}=atomic_ops");
            println!("cargo::rustc-cfg=have_ao");
        }
        None if skip => {}
        None => println!(
            "cargo::warning=libatomic_ops_gpl not found (apt-get install libatomic-ops-dev): \
             the bench runs without AO_malloc"
        ),
    }

    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "unknown".into(), |v| v.trim().to_owned());
    println!("cargo::rustc-env=BENCH_RUSTC_VERSION={version}");
}

/// The directory holding libatomic_ops_gpl and how to link it, static preferred (so the
/// binary runs without the package's shared objects on the library path).
fn find_ao() -> Option<(PathBuf, &'static str)> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::var_os("AO_LIB_DIR")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    for d in [
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib64".into(),
        "/usr/lib".into(),
        "/usr/local/lib".into(),
    ] {
        dirs.push(d.into());
    }
    for (file, kind) in [
        ("libatomic_ops_gpl.a", "static"),
        ("libatomic_ops_gpl.so", "dylib"),
    ] {
        if let Some(d) = dirs.iter().find(|d| Path::new(d).join(file).is_file()) {
            return Some((d.clone(), kind));
        }
    }
    None
}
