//! Push settings: which providers wake offline users' devices.

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct PushArgs {
    /// Push providers, comma separated: `log`.
    #[arg(long, env = "SAMVAD_PUSH_PROVIDERS", default_value = "log")]
    pub push_providers: String,
}

/// The checked push settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushSettings {
    pub log: bool,
}

impl PushArgs {
    pub(super) fn validate(&self, problems: &mut Vec<String>) -> PushSettings {
        let mut settings = PushSettings { log: false };
        for provider in self.push_providers.split(',').map(str::trim) {
            match provider {
                "log" => settings.log = true,
                other => problems.push(format!(
                    "SAMVAD_PUSH_PROVIDERS: `{other}` is not a provider; use `log`"
                )),
            }
        }
        settings
    }
}
