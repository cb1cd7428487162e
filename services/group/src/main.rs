/// mimalloc rather than glibc's malloc, whose per-thread arenas fragment under many
/// long-lived small allocations (docs/BENCHMARKS.md: idle connections).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    samvad_runtime::main(&[group::SERVICE])
}
