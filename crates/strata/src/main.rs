use std::process::ExitCode;

/// Every request allocates (header maps, bodies, futures); mimalloc's thread-local free
/// lists make that several times cheaper than glibc's malloc (bench/RESULTS.md, Gateway).
/// Built without its transparent-huge-page requests (Cargo.toml): they cost 18 MB of
/// resident memory at idle for a 7 % faster argon2 (bench/RESULTS.md, Hot paths).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(strata::cli::main())
}
