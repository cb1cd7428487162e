fn main() -> std::process::ExitCode {
    samvad_kit::main(&[message_router::SERVICE])
}
