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
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain; exit 1 if any record was edited or removed.
    Verify {
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
                for w in cfg.warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Audit { command: AuditCommand::Verify { config } } => {
            let cfg = match load(config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(async {
                let store = match switchboard::daemon::open_store(&cfg).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::from(2);
                    }
                };
                let records = match store.audit_records().await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                };
                match switchboard_actors::store::verify_chain(&records) {
                    Ok(n) => {
                        println!("audit log intact: {n} records verified");
                        ExitCode::SUCCESS
                    }
                    Err((id, why)) => {
                        println!("audit log TAMPERED at record {id}: {why}");
                        ExitCode::from(1)
                    }
                }
            })
        }
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
