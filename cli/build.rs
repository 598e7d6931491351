//! With the `store` feature the binary links DuckDB's shared library from wherever
//! store/fetch-libduckdb.sh put it (named by DUCKDB_LIB_DIR, set in .cargo/config.toml): the
//! binary and its tests are given that directory as their run-time library path, so they start
//! without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
