//! The `signet` binary: parse arguments, run the command, exit 0 / 1 / 2.

/// jemalloc rather than the C library's malloc: its size classes pack a
/// connection's buffers into whole pages and leave freed memory of a burst
/// of connections less scattered, so an idle change feed subscriber keeps
/// about half the resident memory (docs/performance.md).
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    signet::cli::main()
}
