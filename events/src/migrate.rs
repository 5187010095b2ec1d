//! Schema migrations, embedded in the binary: one ordered list per backend, each applied
//! once and recorded in `cairn_migrations`. Applying takes the store's lock, so several
//! processes starting at once do not race.

/// A migration: its number, a short name, and the SQL it runs.
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../../migrations/postgres/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "work",
        sql: include_str!("../../migrations/postgres/0002_work.sql"),
    },
    Migration {
        version: 3,
        name: "claims",
        sql: include_str!("../../migrations/postgres/0003_claims.sql"),
    },
    Migration {
        version: 4,
        name: "snapshots",
        sql: include_str!("../../migrations/postgres/0004_snapshots.sql"),
    },
    Migration {
        version: 5,
        name: "actors",
        sql: include_str!("../../migrations/postgres/0005_actors.sql"),
    },
];

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../../migrations/sqlite/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "work",
        sql: include_str!("../../migrations/sqlite/0002_work.sql"),
    },
    Migration {
        version: 3,
        name: "claims",
        sql: include_str!("../../migrations/sqlite/0003_claims.sql"),
    },
    Migration {
        version: 4,
        name: "snapshots",
        sql: include_str!("../../migrations/sqlite/0004_snapshots.sql"),
    },
    Migration {
        version: 5,
        name: "actors",
        sql: include_str!("../../migrations/sqlite/0005_actors.sql"),
    },
];
