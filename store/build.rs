//! Says how to get DuckDB's library when it is missing (the link would fail later with a bare
//! "cannot find -lduckdb"), and gives this crate's own test, bench and doctest executables
//! the library's directory as their run-time path; the `tickwire` binary gets it from
//! cli/build.rs.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") else {
        // The system's library, found by the linker's own search path.
        return;
    };
    println!("cargo:rerun-if-changed={dir}/libduckdb.so");
    if !Path::new(&dir).join("libduckdb.so").exists() {
        panic!(
            "no libduckdb.so in {dir}: run store/fetch-libduckdb.sh first (it fetches DuckDB \
             1.5.6's prebuilt library, about 24 MB), or point DUCKDB_LIB_DIR at a libduckdb 1.5.6"
        );
    }
    // This crate's tests, benches and doctests, run wherever.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
}
