fn main() -> std::process::ExitCode {
    samvad_kit::main(&[group_router::SERVICE])
}
