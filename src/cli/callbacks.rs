//! `humanline callbacks list|show`: the ledger from the terminal, for supervisors.

use crate::callbacks::{CallbackLedger, PromiseState, RetryPolicy};
use crate::storage::StoreSetting;
use anyhow::Context;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct CallbacksArgs {
    /// Folder of the server's data (the ledger is `callbacks.db` in it).
    #[arg(long, default_value = "data", global = true)]
    data_dir: PathBuf,
    /// The ledger's store, as the server's `store` setting: "sqlite" (in the data folder) or
    /// a "postgres://..." URL.
    #[arg(long, default_value = "sqlite", global = true, value_parser = StoreSetting::parse)]
    store: StoreSetting,
    #[command(subcommand)]
    command: CallbacksCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CallbacksCommand {
    /// List promises, oldest first.
    List {
        /// Only this state: promised, dialing, connected, completed, retrying, escalated.
        #[arg(long)]
        state: Option<String>,
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One promise with its attempts, as JSON.
    Show { id: i64 },
}

pub fn ledger_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("callbacks.db")
}

pub fn run(args: CallbacksArgs) -> anyhow::Result<()> {
    if args.store == StoreSetting::Sqlite {
        let path = ledger_path(&args.data_dir);
        anyhow::ensure!(
            path.is_file(),
            "no callback ledger at {} (start `humanline serve --data-dir {}` first)",
            path.display(),
            args.data_dir.display()
        );
    }
    // Reading only: the node name is never written (this process claims nothing).
    let store = args
        .store
        .open(
            &args.data_dir,
            "callbacks-cli",
            crate::storage::DEFAULT_LEASE_MS,
        )
        .with_context(|| format!("opening {}", args.store.describe(&args.data_dir)))?;
    let mut ledger = CallbackLedger::new(store, RetryPolicy::default());
    match args.command {
        CallbacksCommand::List { state, json } => {
            let state = match state {
                Some(s) => Some(PromiseState::parse(&s).with_context(|| {
                    let known: Vec<_> = PromiseState::ALL.iter().map(|s| s.as_str()).collect();
                    format!("unknown state `{s}` (one of {})", known.join(", "))
                })?),
                None => None,
            };
            let list = ledger.list(state)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("    ID  STATE       NUMBER            ATTEMPTS  REASON      CALL");
                for p in list {
                    println!(
                        "{:>6}  {:<10}  {:<16}  {:>8}  {:<10}  {}",
                        p.id,
                        p.state.as_str(),
                        p.number,
                        p.attempts,
                        p.reason,
                        p.call_id
                    );
                }
            }
        }
        CallbacksCommand::Show { id } => {
            let promise = ledger.get(id)?;
            let attempts = ledger.attempts(id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"promise": promise, "attempts": attempts})
                )?
            );
        }
    }
    Ok(())
}
