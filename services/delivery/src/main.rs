fn main() -> std::process::ExitCode {
    samvad_kit::main(&[delivery::SERVICE])
}
