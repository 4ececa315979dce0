use std::process::ExitCode;

/// Every request allocates (header maps, bodies, futures); mimalloc's thread-local free
/// lists make that several times cheaper than glibc's malloc (bench/RESULTS.md, Gateway).
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
