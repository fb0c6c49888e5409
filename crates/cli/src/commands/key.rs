//! `cairn key`: add, list, remove and change passwords.

use crate::common::{read_password, GlobalOpts};
use anyhow::Result;
use cairn_core::crypto::KdfParams;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct NewPassword {
    /// Read the new password from this file (else CAIRN_NEW_PASSWORD or a prompt).
    #[arg(long)]
    pub new_password_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Add a password.
    Add(NewPassword),
    /// List keys.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a key by id prefix.
    Remove {
        /// Key id (or a unique prefix).
        id: String,
    },
    /// Change the password this command opens with.
    Passwd(NewPassword),
}

fn new_password(a: &NewPassword) -> Result<String> {
    read_password(
        "CAIRN_NEW_PASSWORD",
        a.new_password_file.as_ref(),
        "new password: ",
    )
}

pub fn run(g: &GlobalOpts, k: KeyCommand) -> Result<ExitCode> {
    let repo = g.open()?;
    match k {
        KeyCommand::Add(a) => {
            let id = repo.add_key(&new_password(&a)?, KdfParams::default())?;
            outln!("added key {id}");
        }
        KeyCommand::List { json } => {
            let keys = repo.list_keys()?;
            if json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|k| serde_json::json!({"id": k.id, "label": k.label, "created": k.created, "current": k.current, "damaged": k.damaged}))
                    .collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                // Ids are 64 hex digits (32 for keys made by older cairn).
                let w = keys.iter().map(|k| k.id.len()).max().unwrap_or(2);
                outln!(" {:<w$}  {:<19}  LABEL", "ID", "CREATED");
                for k in keys {
                    let created =
                        chrono::DateTime::from_timestamp(k.created, 0).unwrap_or_default();
                    match &k.damaged {
                        Some(why) => outln!(" {:<w$}  {:<19}  DAMAGED: {why}", k.id, "-"),
                        None => outln!(
                            "{}{:<w$}  {:<19}  {}",
                            if k.current { "*" } else { " " },
                            k.id,
                            crate::output::time(&created),
                            k.label
                        ),
                    }
                }
            }
        }
        KeyCommand::Remove { id } => {
            // Removing a key must not race another key removal or a repair.
            let lock = cairn_core::lock::ExclusiveLock::acquire(
                &repo,
                &cairn_core::lock::LockOptions::new("key remove"),
            )?;
            let removed = repo.remove_key(&id)?;
            lock.release()?;
            outln!("removed key {removed}");
        }
        KeyCommand::Passwd(a) => {
            let id = repo.change_password(&new_password(&a)?, KdfParams::default())?;
            outln!("password changed; new key {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
