fn main() -> std::process::ExitCode {
    samvad_kit::main(&[rest_gateway::SERVICE])
}
