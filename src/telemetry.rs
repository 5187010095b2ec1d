//! Logging: human-readable or JSON lines on stderr, level from `RUST_LOG`.
//!
//! Without `RUST_LOG`, the server logs at info and every other subcommand at warn: an
//! operator running `cairn user add` wants the token, not the migrations that were
//! applied. Colour is used only when stderr is a terminal and `NO_COLOR` is unset or
//! empty, so logs piped to a file or another program carry no escape codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How much a process logs when `RUST_LOG` does not say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verbosity {
    /// The server: what it does, at info.
    Server,
    /// A one-shot command: warnings and errors only.
    Command,
}

pub fn init(json: bool, verbosity: Verbosity) {
    let default = match verbosity {
        Verbosity::Server => "info,sqlx=warn",
        Verbosity::Command => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let colour = use_colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but the empty string.
fn use_colour(terminal: bool, no_colour: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_colour.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
    }
}
