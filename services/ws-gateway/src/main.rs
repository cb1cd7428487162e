fn main() -> std::process::ExitCode {
    samvad_kit::main(&[ws_gateway::SERVICE])
}
