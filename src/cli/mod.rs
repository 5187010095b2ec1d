//! The command line: `serve`, `migrate`, and the administrative subcommands.

use std::path::PathBuf;

use anyhow::Context;
use cairn_command::users;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

mod backups;
mod exports;

use crate::app::{Application, Role};
use crate::backends;
use crate::config::Config;
use crate::telemetry::Verbosity;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "Messages, time capsules, backups and exports, event-sourced."
)]
pub struct Cli {
    /// A TOML configuration file (default: $CAIRN_CONFIG, else ./cairn.toml if present).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Which parts to run; separate roles need Postgres and Redis.
        #[arg(long, value_enum, default_value = "all")]
        role: Role,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Manage users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage read models.
    Projections {
        #[command(subcommand)]
        command: ProjectionCommand,
    },
    /// Block or unblock capsule senders (beside `CAIRN_BLOCKED_SENDERS`).
    Sender {
        #[command(subcommand)]
        command: SenderCommand,
    },
    /// Look at the outbox's dead letters (emails that could not be sent) and retry them.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Look at the scheduler's work: the due index and the outbox.
    Scheduler {
        #[command(subcommand)]
        command: SchedulerCommand,
    },
    /// A user's backup services and their API keys.
    Service {
        /// Whose.
        #[arg(long)]
        user: String,
        #[command(subcommand)]
        command: backups::ServiceCommand,
    },
    /// A user's backup resources (each with its upload URL).
    Resource {
        #[arg(long)]
        user: String,
        #[command(subcommand)]
        command: backups::ResourceCommand,
    },
    /// The backups a resource keeps.
    Backup {
        #[arg(long)]
        user: String,
        #[command(subcommand)]
        command: backups::BackupCommand,
    },
    /// Export everything a user owns, to a bundle or a git repository, following its
    /// progress (the server's scheduler runs it).
    Export(exports::ExportArgs),
    /// Import a bundle (`cairn export`'s zip) under a user: its messages come back.
    Import {
        bundle: PathBuf,
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
pub enum SchedulerCommand {
    /// The next due items, the due index's and the outbox's depths, and the dead letters.
    Status {
        /// How many of the next due items (and dead letters) to list.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Subcommand)]
pub enum SenderCommand {
    /// Refuse capsules from this address (`BLOCKED_SENDER_EMAIL`).
    Block { email: String },
    /// Take an address off the blocklist kept here.
    Unblock { email: String },
    /// The blocked addresses: configured, then blocked here.
    List,
}

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// List dead letters, oldest first: id, kind, tries, queued, last error, recipient.
    Dead {
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Queue dead letters again, with their tries reset (`all` for every one).
    Retry {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user; prints a new bearer token as the last line.
    Add {
        name: String,
        #[arg(long)]
        email: Option<String>,
        /// Import an existing token string (e.g. Dunder's base64 user name) instead of
        /// minting one; it is flagged as weak.
        #[arg(long)]
        token: Option<String>,
        /// When the token stops working (RFC 3339).
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
    },
    /// List users and their tokens.
    List,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue another token for a user; prints it as the last line.
    Add {
        name: String,
        #[arg(long)]
        token: Option<String>,
        #[arg(long)]
        expires: Option<DateTime<Utc>>,
    },
    /// Revoke a token, given its id (see `user list`) or the token itself.
    Revoke { token: String },
}

#[derive(Subcommand)]
pub enum ProjectionCommand {
    /// Rebuild a read model from the first event, beside the current one, which keeps
    /// answering reads until the new one has caught up and replaces it.
    Rebuild {
        /// The projection (default: all of them).
        name: Option<String>,
    },
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    let verbosity = match cli.command {
        Command::Serve { .. } => Verbosity::Server,
        _ => Verbosity::Command,
    };
    crate::telemetry::init(config.log_format == "json", verbosity);
    match cli.command {
        Command::Serve { role } => serve(&config, role).await,
        Command::Migrate => {
            let events = backends::open_events(&config).await?;
            println!(
                "schema of {} is up to date (head position {})",
                config.database_for_log(),
                events.head().await?
            );
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Add {
                    name,
                    email,
                    token,
                    expires,
                },
        } => {
            let events = backends::open_events(&config).await?;
            let written =
                users::add_user(&*events, &name, email.as_deref(), token.as_deref(), expires)
                    .await?;
            eprintln!("created user {name}; keep this token, it is not shown again:");
            println!("{}", written.value);
            Ok(())
        }
        Command::User {
            command: UserCommand::List,
        } => {
            let events = backends::open_events(&config).await?;
            for user in users::list_users(&*events).await? {
                println!(
                    "{}\t{}\t{}\tcreated {}",
                    user.name,
                    user.id,
                    user.email.as_deref().unwrap_or("-"),
                    user.created_at.to_rfc3339()
                );
                for t in &user.tokens {
                    let mut flags = Vec::new();
                    if t.weak {
                        flags.push("WEAK (imported)".to_owned());
                    }
                    if t.revoked {
                        flags.push("revoked".to_owned());
                    }
                    if let Some(at) = t.expires_at {
                        flags.push(format!("expires {}", at.to_rfc3339()));
                    }
                    println!(
                        "  token {}\tissued {}\t{}",
                        t.id,
                        t.issued_at.to_rfc3339(),
                        flags.join(", ")
                    );
                }
            }
            Ok(())
        }
        Command::Token {
            command:
                TokenCommand::Add {
                    name,
                    token,
                    expires,
                },
        } => {
            let events = backends::open_events(&config).await?;
            let written = users::add_token(&*events, &name, token.as_deref(), expires).await?;
            eprintln!("new token for {name}; keep it, it is not shown again:");
            println!("{}", written.value);
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Revoke { token },
        } => {
            let events = backends::open_events(&config).await?;
            let written = users::revoke_token(&*events, &token).await?;
            println!("revoked token {} of {}", written.value.1, written.value.0);
            Ok(())
        }
        Command::Outbox { command } => outbox(&config, command).await,
        Command::Service { user, command } => backups::service(&config, &user, command).await,
        Command::Resource { user, command } => backups::resource(&config, &user, command).await,
        Command::Backup { user, command } => backups::backup(&config, &user, command).await,
        Command::Export(args) => exports::export(&config, args).await,
        Command::Import { bundle, user } => exports::import(&config, bundle, user).await,
        Command::Scheduler { command } => scheduler(&config, command).await,
        Command::Sender { command } => senders(&config, command).await,
        Command::Projections {
            command: ProjectionCommand::Rebuild { name },
        } => {
            let names: Vec<&str> = match &name {
                Some(n) if cairn_query::projections::NAMES.contains(&n.as_str()) => {
                    vec![n.as_str()]
                }
                Some(n) => anyhow::bail!(
                    "no projection named {n}; known: {}",
                    cairn_query::projections::NAMES.join(", ")
                ),
                None => cairn_query::projections::NAMES.to_vec(),
            };
            let events = backends::open_events(&config).await?;
            let read = backends::open_read(&config, &*events).await?;
            for n in names {
                let generation = read
                    .begin_generation(n)
                    .await
                    .with_context(|| format!("starting a rebuild of {n}"))?;
                println!(
                    "{n}: rebuilding from the first event (generation {generation}); the running \
                     projector builds it beside the current one, which answers reads until the \
                     new one has caught up"
                );
            }
            Ok(())
        }
    }
}

async fn senders(config: &Config, command: SenderCommand) -> anyhow::Result<()> {
    let clock = cairn_events::Clock::system();
    let events = backends::open_events(config).await?;
    let capsules = backends::capsules(config, events, backends::open_blobs(config)?, clock).await?;
    let done = match &command {
        SenderCommand::Block { email } => capsules.set_blocked(email, true).await,
        SenderCommand::Unblock { email } => capsules.set_blocked(email, false).await,
        SenderCommand::List => {
            for email in capsules.blocked_senders.iter() {
                println!("{email}\tconfigured (CAIRN_BLOCKED_SENDERS)");
            }
            for email in capsules
                .blocked_by_cli()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?
            {
                println!("{email}\tblocked from the command line");
            }
            return Ok(());
        }
    };
    done.map_err(|e| anyhow::anyhow!("{e}"))?;
    match command {
        SenderCommand::Block { email } => println!("{email}: blocked"),
        SenderCommand::Unblock { email } => println!("{email}: no longer blocked here"),
        SenderCommand::List => {}
    }
    Ok(())
}

async fn outbox(config: &Config, command: OutboxCommand) -> anyhow::Result<()> {
    let store = backends::open_store(config).await?;
    match command {
        OutboxCommand::Dead { limit } => {
            for dead in store.dead_letters(limit).await? {
                let to = dead.message.payload["to"].as_str().unwrap_or("-");
                println!(
                    "{}\t{}\t{} tries\tqueued {}\t{}\tto {to}",
                    dead.message.id,
                    dead.message.kind,
                    dead.attempts,
                    dead.queued_at.to_rfc3339(),
                    dead.last_error.as_deref().unwrap_or("-"),
                );
            }
        }
        OutboxCommand::Retry { ids } => {
            let ids: Vec<uuid::Uuid> = if ids.iter().any(|i| i == "all") {
                store
                    .dead_letters(usize::MAX)
                    .await?
                    .into_iter()
                    .map(|d| d.message.id)
                    .collect()
            } else {
                ids.iter()
                    .map(|i| {
                        i.parse()
                            .with_context(|| format!("{i:?} is not an outbox id"))
                    })
                    .collect::<anyhow::Result<_>>()?
            };
            for id in ids {
                if store.revive(id).await? {
                    println!("{id}: queued again");
                } else {
                    println!("{id}: not a dead letter");
                }
            }
        }
    }
    Ok(())
}

async fn scheduler(config: &Config, command: SchedulerCommand) -> anyhow::Result<()> {
    let SchedulerCommand::Status { limit } = command;
    let store = backends::open_store(config).await?;
    let now = Utc::now();
    let due = store.due_status(now, limit).await?;
    let outbox = store.outbox_status().await?;
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match due.oldest_overdue {
        Some(oldest) => println!(
            "due items: {} ({} overdue, the oldest due {})",
            due.depth,
            due.overdue,
            time(oldest)
        ),
        None => println!("due items: {} (none overdue)", due.depth),
    }
    for pending in &due.next {
        let claim = match (pending.claimed_by, pending.claimed_until) {
            (Some(holder), Some(until)) => {
                format!("\tclaimed by process {holder} until {}", time(until))
            }
            (None, Some(at)) => format!("\tput off until {} after a failure", time(at)),
            _ => String::new(),
        };
        println!(
            "  {}\t{}\t{}{claim}",
            time(pending.item.due_at),
            pending.item.action,
            pending.item.key
        );
    }
    println!(
        "outbox: {} queued ({} waiting for a retry), {} dead letters{}",
        outbox.queued,
        outbox.retrying,
        outbox.dead,
        outbox
            .oldest_queued
            .map(|t| format!(", the oldest queued {}", time(t)))
            .unwrap_or_default()
    );
    for dead in store.dead_letters(limit).await? {
        println!(
            "  dead {}\t{}\t{} tries\tqueued {}\t{}",
            dead.message.id,
            dead.message.kind,
            dead.attempts,
            time(dead.queued_at),
            dead.last_error.as_deref().unwrap_or("-"),
        );
    }
    Ok(())
}

async fn serve(config: &Config, role: Role) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let app = Application::build(config, role, shutdown.clone()).await?;
    tracing::info!(role = ?role, database = %config.database_for_log(), "cairn starting");
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        shutdown.cancel();
    });
    app.run().await
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
