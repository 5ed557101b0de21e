//! `switchboard`: the command line. Everything else is library code.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::config::Config;

#[derive(Parser)]
#[command(name = "switchboard", version, about = "Self-hosted, always-on AI assistant daemon")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        /// Config file (default: config/switchboard.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate the config and print the effective values (secrets masked); exit 1 if invalid.
    CheckConfig {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load(path: Option<PathBuf>) -> Result<Config, ExitCode> {
    Config::load(path.as_deref(), std::env::vars()).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(1)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match load(config) {
            Ok(cfg) => {
                print!("{}", cfg.to_masked_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            switchboard::daemon::init_logging(&cfg);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            match rt.block_on(switchboard::daemon::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
