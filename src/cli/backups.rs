//! `cairn service …`, `cairn resource …`, `cairn backup …`: what the backup routes do, for
//! a user named on the command line, against the same database as the server.

use anyhow::Context;
use cairn_command::backups::{Backups, ResourceState, ServiceState};
use cairn_command::users;
use cairn_events::domain::backup::{Notifications, ResourceSettings, Retention, ServiceSettings};
use clap::Subcommand;
use uuid::Uuid;

use crate::backends;
use crate::config::Config;

#[derive(Subcommand)]
pub enum ServiceCommand {
    /// The user's services.
    List,
    /// Make a service; prints its id.
    Add {
        name: String,
        /// `1w`, `1m`, `3m` or a number of days.
        #[arg(long, default_value = "1m")]
        retention: String,
        /// Uploads need one of the service's API keys.
        #[arg(long)]
        auth: bool,
        /// Uploads only from these addresses or CIDR ranges (repeat the option).
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// The largest backup taken, in bytes.
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// A service's settings, keys and resources.
    Show { service: Uuid },
    /// Delete a service, its resources and their backups.
    Delete { service: Uuid },
    /// Make an API key; prints it as the last line (it is not shown again).
    KeyAdd { service: Uuid, name: String },
    /// Revoke an API key.
    KeyRevoke { service: Uuid, key: Uuid },
}

#[derive(Subcommand)]
pub enum ResourceCommand {
    /// A service's resources.
    List { service: Uuid },
    /// Make a resource; prints its upload URL as the last line.
    Add {
        service: Uuid,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Take uploads again.
    Activate { resource: Uuid },
    /// Refuse uploads.
    Deactivate { resource: Uuid },
    /// Delete a resource and its backups.
    Delete { resource: Uuid },
}

#[derive(Subcommand)]
pub enum BackupCommand {
    /// The backups a resource keeps, newest first.
    List { resource: Uuid },
    /// Write a backup's file to `--out` (default: its name, in this directory).
    Download {
        resource: Uuid,
        backup: Uuid,
        #[arg(long, short)]
        out: Option<std::path::PathBuf>,
    },
}

/// The backup use cases, and the id of the user named `user`.
async fn open(config: &Config, user: &str) -> anyhow::Result<(Backups, Uuid)> {
    let events = backends::open_events(config).await?;
    let owner = users::user_by_name(&*events, user).await?.id;
    let blobs = backends::open_blobs(config)?;
    let backups = backends::backups(config, events, blobs, cairn_events::Clock::system()).await?;
    Ok((backups, owner))
}

fn print_service(service: &ServiceState) {
    let s = &service.settings;
    println!(
        "{}\t{}\tretention {}\tauth {}\tallowlist {}\tmax {} bytes\t{} resources",
        service.service_id,
        s.name,
        s.retention.label(),
        if s.auth_enabled { "on" } else { "off" },
        if s.allowlist_enabled {
            s.allowlist
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        } else {
            "off".to_owned()
        },
        s.max_backup_bytes,
        service.resources.len()
    );
}

fn print_resource(backups: &Backups, resource: &ResourceState) {
    println!(
        "{}\t{}\t{}\t{} backups\t{}/{}",
        resource.resource_id,
        resource.settings.name,
        if resource.settings.active {
            "active"
        } else {
            "inactive"
        },
        resource.backups.len(),
        backups.public_url.trim_end_matches('/'),
        resource.resource_id
    );
}

pub async fn service(config: &Config, user: &str, command: ServiceCommand) -> anyhow::Result<()> {
    let (backups, owner) = open(config, user).await?;
    match command {
        ServiceCommand::List => {
            for service in backups.services_of(owner).await? {
                print_service(&service);
            }
        }
        ServiceCommand::Add {
            name,
            retention,
            auth,
            allow,
            max_bytes,
        } => {
            let retention = Retention::parse(&retention)
                .with_context(|| format!("--retention {retention:?}: 1w, 1m, 3m or days"))?;
            let allowlist = allow
                .iter()
                .map(|a| {
                    a.parse()
                        .map_err(|e: String| anyhow::anyhow!("--allow: {e}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let settings = ServiceSettings {
                name,
                description: String::new(),
                retention,
                auth_enabled: auth,
                allowlist_enabled: !allowlist.is_empty(),
                allowlist,
                max_backup_bytes: max_bytes
                    .unwrap_or(cairn_events::domain::backup::DEFAULT_MAX_BACKUP_BYTES),
                notifications: Notifications::default(),
            };
            let service = backups.create_service(owner, settings).await?;
            println!("{}", service.service_id);
        }
        ServiceCommand::Show { service } => {
            let service = backups.owned_service(owner, service).await?;
            print_service(&service);
            for key in &service.keys {
                println!(
                    "  key {}\t{}\tcreated {}\tlast used {}",
                    key.key_id,
                    key.name,
                    key.created_at.to_rfc3339(),
                    key.last_used.map_or("never".to_owned(), |t| t.to_rfc3339())
                );
            }
            for resource in backups.resources_of(owner, service.service_id).await? {
                print!("  resource ");
                print_resource(&backups, &resource);
            }
        }
        ServiceCommand::Delete { service } => {
            backups.delete_service(owner, service).await?;
            println!("{service}: deleted");
        }
        ServiceCommand::KeyAdd { service, name } => {
            let (made, key) = backups.create_key(owner, service, &name).await?;
            eprintln!(
                "key {} for {service}; keep it, it is not shown again:",
                made.key_id
            );
            println!("{key}");
        }
        ServiceCommand::KeyRevoke { service, key } => {
            backups.revoke_key(owner, service, key).await?;
            println!("{key}: revoked");
        }
    }
    Ok(())
}

pub async fn resource(config: &Config, user: &str, command: ResourceCommand) -> anyhow::Result<()> {
    let (backups, owner) = open(config, user).await?;
    let set_active =
        |active: bool| move |current: ResourceSettings| Ok(ResourceSettings { active, ..current });
    match command {
        ResourceCommand::List { service } => {
            for resource in backups.resources_of(owner, service).await? {
                print_resource(&backups, &resource);
            }
        }
        ResourceCommand::Add {
            service,
            name,
            description,
        } => {
            let settings = ResourceSettings {
                name,
                description,
                active: true,
                expected: None,
            };
            let resource = backups.create_resource(owner, service, settings).await?;
            eprintln!("resource {}; backups are posted to:", resource.resource_id);
            println!(
                "{}/{}",
                backups.public_url.trim_end_matches('/'),
                resource.resource_id
            );
        }
        ResourceCommand::Activate { resource } => {
            backups
                .update_resource(owner, resource, set_active(true))
                .await?;
            println!("{resource}: active");
        }
        ResourceCommand::Deactivate { resource } => {
            backups
                .update_resource(owner, resource, set_active(false))
                .await?;
            println!("{resource}: inactive");
        }
        ResourceCommand::Delete { resource } => {
            backups.delete_resource(owner, resource).await?;
            println!("{resource}: deleted");
        }
    }
    Ok(())
}

pub async fn backup(config: &Config, user: &str, command: BackupCommand) -> anyhow::Result<()> {
    let (backups, owner) = open(config, user).await?;
    match command {
        BackupCommand::List { resource } => {
            let resource = backups.owned_resource(owner, resource).await?;
            for backup in resource.backups.iter().rev() {
                let stored = &backup.stored;
                println!(
                    "{}\t{}\t{}\t{} bytes\tsha256 {}\t{}",
                    stored.backup_id,
                    backup.created_at.to_rfc3339(),
                    stored.format,
                    stored.bytes,
                    stored.sha256,
                    stored.file_name
                );
            }
        }
        BackupCommand::Download {
            resource,
            backup,
            out,
        } => {
            let resource = backups.owned_resource(owner, resource).await?;
            let found = resource
                .backup(backup)
                .with_context(|| format!("no backup {backup} in this resource"))?;
            let path = out.unwrap_or_else(|| found.stored.file_name.clone().into());
            let mut file = tokio::fs::File::create(&path)
                .await
                .with_context(|| format!("creating {}", path.display()))?;
            let copied = backups
                .blobs
                .copy_to(&found.stored.blob, &mut file)
                .await?
                .context("the backup's file is no longer kept")?;
            file.sync_all().await?;
            println!("{}: {copied} bytes", path.display());
        }
    }
    Ok(())
}
