fn main() -> std::process::ExitCode {
    samvad_kit::main(&[assets::SERVICE])
}
