fn main() -> std::process::ExitCode {
    if std::env::args().nth(1).as_deref() == Some("vapid-keys") {
        return samvad::vapid_keys();
    }
    samvad_kit::main(samvad::SERVICES)
}
