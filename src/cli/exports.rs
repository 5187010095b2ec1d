//! `cairn export` and `cairn import`: a user's export asked for from the command line and
//! followed with a progress bar (the server's scheduler runs it), and a bundle read back
//! in under a user.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use cairn_command::auth::AuthUser;
use cairn_command::exports::{Exports, Status, decide};
use cairn_command::users;
use cairn_events::Clock;
use clap::Args;

use crate::backends;
use crate::config::Config;

#[derive(Args)]
pub struct ExportArgs {
    /// Whose.
    #[arg(long)]
    user: String,
    /// A git destination: `https://…`, `http://…`, `file://…` or an absolute path (else a
    /// bundle).
    #[arg(long)]
    git: Option<String>,
    /// The branch of the git destination.
    #[arg(long, default_value = "main", requires = "git")]
    branch: String,
    /// The environment variable holding the git remote's token (never on the command line).
    #[arg(long, requires = "git")]
    token_env: Option<String>,
    /// Keep the git destination in sync with new messages.
    #[arg(long, requires = "git")]
    keep_in_sync: bool,
    /// Also the backup files.
    #[arg(long)]
    include_files: bool,
    /// Where to write the bundle once it is done (default: only its link is printed).
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Ask for it and print its id, without following it.
    #[arg(long)]
    detach: bool,
}

async fn open(
    config: &Config,
) -> anyhow::Result<(Exports, std::sync::Arc<dyn cairn_events::EventStore>)> {
    let events = backends::open_events(config).await?;
    let blobs = backends::open_blobs(config)?;
    let clock = Clock::system();
    let backups = backends::backups(config, events.clone(), blobs.clone(), clock.clone()).await?;
    let capsules = backends::capsules(config, events.clone(), blobs.clone(), clock.clone()).await?;
    let exports =
        backends::exports(config, events.clone(), blobs, clock, backups, capsules).await?;
    Ok((exports, events))
}

pub async fn export(config: &Config, args: ExportArgs) -> anyhow::Result<()> {
    let (exports, events) = open(config).await?;
    let user = users::user_by_name(&*events, &args.user).await?;
    let token = match &args.token_env {
        Some(name) => Some(std::env::var(name).with_context(|| format!("${name} is not set"))?),
        None => None,
    };
    let (kind, url) = match args.git {
        Some(url) => ("git", Some(url)),
        None => ("bundle", None),
    };
    let request = decide::request(
        kind,
        url,
        Some(args.branch),
        token,
        args.include_files,
        args.keep_in_sync,
    )
    .map_err(|invalid| anyhow::anyhow!("{}: {}", invalid.field, invalid.message))?;
    let caller = AuthUser {
        id: user.id,
        name: user.name.clone(),
    };
    let export = exports.request(&caller, request).await?;
    let id = export.id();
    if args.detach {
        println!("{id}");
        return Ok(());
    }
    eprintln!("export {id} queued; the scheduler (cairn serve) runs it");
    let bar = std::io::stderr().is_terminal();
    let mut shown = None;
    let mut waited = Duration::ZERO;
    let export = loop {
        let export = exports.owned(user.id, id).await?;
        let progress = cairn_command::exports::progress::Progress::from(&export);
        let line = format!(
            "{} {}/{} {} {}",
            bar_of(progress.done, progress.total),
            progress.done,
            progress.total,
            progress.status,
            progress
                .step
                .clone()
                .or(progress.error.clone())
                .unwrap_or_default()
        );
        if shown.as_ref() != Some(&line) {
            if bar {
                eprint!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
            let _ = std::io::stderr().flush();
            shown = Some(line);
        }
        if export.status.is_over() {
            if bar {
                eprintln!();
            }
            break export;
        }
        if export.status == Status::Queued && waited == Duration::from_secs(10) {
            eprintln!(
                "\nstill queued: behind another export of {}'s, or no scheduler is running",
                user.name
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        waited += Duration::from_millis(250);
    };
    match export.status {
        Status::Completed => {
            if let Some(bundle) = &export.bundle {
                println!("{}", exports.bundle_link(id, exports.now()));
                if let Some(out) = args.out {
                    let mut file = tokio::fs::File::create(&out)
                        .await
                        .with_context(|| format!("creating {}", out.display()))?;
                    exports
                        .download(&bundle.blob, &mut file)
                        .await
                        .context("reading the bundle")?;
                    eprintln!("wrote {} ({} bytes)", out.display(), bundle.bytes);
                }
            }
            Ok(())
        }
        _ => anyhow::bail!(
            "the export {}: {}",
            export.status.as_str(),
            export.failure.unwrap_or_default()
        ),
    }
}

/// `[#####.....]`.
fn bar_of(done: usize, total: usize) -> String {
    const WIDTH: usize = 30;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0).min(WIDTH);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

pub async fn import(config: &Config, bundle: PathBuf, user: String) -> anyhow::Result<()> {
    let (exports, events) = open(config).await?;
    let user = users::user_by_name(&*events, &user).await?;
    let imported = exports
        .import(&bundle, &user)
        .await
        .with_context(|| format!("importing {}", bundle.display()))?;
    println!(
        "{} messages imported, {} already here",
        imported.messages, imported.messages_present
    );
    Ok(())
}
