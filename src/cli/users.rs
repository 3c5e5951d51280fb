//! `humanline users add|list|remove`: who may log in (console, API, SIP phones). The first
//! user is added here, before anyone can log in; the password never goes on the command line
//! (it would be in the shell's history and in `ps`): it is read from stdin, or asked for
//! (twice, not echoed) on a terminal.

use crate::server::ServerFile;
use crate::storage::StoreSetting;
use crate::web::auth::{Role, password};
use anyhow::Context;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct UsersArgs {
    /// The server's settings (TOML), for its `data_dir`, `store` and `[registrar] realm`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Folder of the server's data (users live in `callbacks.db` there) [default: the
    /// config's data_dir, else data].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Where the users are, as the server's `store` setting: "sqlite" (in the data folder) or
    /// the "postgres://..." URL several nodes share [default: the config's store, else sqlite].
    #[arg(long, global = true, value_parser = StoreSetting::parse)]
    store: Option<StoreSetting>,
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Debug, clap::Subcommand)]
enum UsersCommand {
    /// Add a user. The password is the first line of stdin, or asked for on a terminal.
    Add {
        name: String,
        /// agent (takes calls), supervisor (also callbacks and escalations), operator
        /// (everything).
        #[arg(long, value_parser = ["agent", "supervisor", "operator"])]
        role: String,
    },
    /// List users (never their passwords).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a user: their sessions end and their phone can no longer register.
    Remove { name: String },
}

fn read_password(name: &str) -> anyhow::Result<String> {
    if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("Password for {name}: "))
            .context("reading the password")?;
        let again = rpassword::prompt_password("Again: ").context("reading the password")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(password::MAX_PASSWORD_BYTES as u64 + 2)
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    let pw = line.strip_suffix('\n').unwrap_or(&line);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    anyhow::ensure!(!pw.is_empty(), "no password on stdin");
    Ok(pw.to_string())
}

pub fn run(args: UsersArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ServerFile::load(path)?,
        None => ServerFile::default(),
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| "data".into());
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let store = args.store.clone().unwrap_or_else(|| file.store());
    let place = store.describe(&data_dir);
    let mut users = store
        .open_users(&data_dir)
        .with_context(|| format!("opening the users in {place}"))?;
    match args.command {
        UsersCommand::Add { name, role } => {
            let role = Role::parse(&role).context("unknown role")?;
            let realm = file.registrar.settings().realm;
            let pw = read_password(&name)?;
            let user = password::new_user(&name, role, &pw, &realm, crate::callbacks::unix_now())?;
            users.add(&user)?;
            eprintln!("added {name} ({role}) to {place}");
        }
        UsersCommand::List { json } => {
            let list = users.list()?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|u| {
                        serde_json::json!({"name": u.name, "role": u.role, "sip_realm": u.sip_realm,
                            "created_at": u.created_at})
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for u in &list {
                    println!("{:<24} {:<10} realm {}", u.name, u.role, u.sip_realm);
                }
            }
        }
        UsersCommand::Remove { name } => {
            users.remove(&name)?;
            eprintln!("removed {name}");
        }
    }
    Ok(())
}
