//! Gives the shared library a SONAME (Linux) / install name (macOS) carrying its ABI version, so
//! that programs linked against one ABI never load an incompatible one.

fn main() {
    let major: u32 = env("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor: u32 = env("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    // Before 1.0 every minor version may break the ABI (semver), so it is part of the name.
    let abi = if major == 0 {
        format!("0.{minor}")
    } else {
        major.to_string()
    };
    match env("CARGO_CFG_TARGET_OS").as_str() {
        "linux" | "android" | "freebsd" | "netbsd" | "openbsd" | "dragonfly" | "illumos" => {
            println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,librmsprop_simd.so.{abi}");
        }
        "macos" | "ios" => {
            println!(
                "cargo:rustc-cdylib-link-arg=-Wl,-install_name,@rpath/librmsprop_simd.{abi}.dylib"
            );
        }
        _ => {}
    }
    println!("cargo:rustc-env=RMSPROP_SIMD_ABI={abi}");
    println!("cargo:rerun-if-changed=build.rs");
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}
