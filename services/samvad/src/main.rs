/// mimalloc rather than glibc's malloc, whose per-thread arenas fragment under many
/// long-lived small allocations (docs/BENCHMARKS.md: idle connections).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("vapid-keys") {
        return samvad::vapid_keys();
    }
    samvad_runtime::main(samvad::SERVICES)
}
