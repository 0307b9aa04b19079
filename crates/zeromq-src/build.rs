//! Hands the location of the libsodium that libsodium-sys-stable built to
//! this library, which passes it to libzmq's build later, in the build
//! script of the package that builds libzmq (zmq-sys).

use std::env;

fn main() {
    for (from, to) in [
        ("DEP_SODIUM_INCLUDE", "LIBSODIUM_INCLUDE_DIR"),
        ("DEP_SODIUM_LIB", "LIBSODIUM_LIB_DIR"),
    ] {
        println!("cargo:rerun-if-env-changed={from}");
        match env::var(from) {
            Ok(dir) => println!("cargo:rustc-env={to}={dir}"),
            Err(_) => {
                println!("cargo:warning=libsodium-sys-stable did not say where {from} is");
                std::process::exit(1);
            }
        }
    }
}
