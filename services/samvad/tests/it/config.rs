//! Settings as an operator gives them: a `.env` file in the working directory, below the
//! environment, as `.env.tmpl` says.

use std::process::Command;

fn check_config(dir: &std::path::Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_samvad"))
        .arg("check-config")
        .current_dir(dir)
        .env_remove("SAMVAD_RATE_LIMIT")
        .env_remove("SAMVAD_AUTH_PROVIDER")
        .env("SAMVAD_RATE_BURST", "9")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn a_dotenv_file_in_the_working_directory_is_read_below_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "SAMVAD_RATE_LIMIT=7\nSAMVAD_RATE_BURST=3\nSAMVAD_AUTH_PROVIDER=dev\n",
    )
    .unwrap();
    let (code, out) = check_config(dir.path());
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "SAMVAD_RATE_LIMIT=7  # .env",
        "SAMVAD_RATE_BURST=9  # environment",
        "SAMVAD_AUTH_PROVIDER=dev  # .env",
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }

    std::fs::write(dir.path().join(".env"), "SAMVAD_RATE_LIMIT=7\nhunter2\n").unwrap();
    let (code, out) = check_config(dir.path());
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(".env line 2: not a KEY=VALUE setting"),
        "{out}"
    );
    assert!(
        !out.contains("hunter2"),
        "a line is never repeated: it may hold a secret"
    );
}
