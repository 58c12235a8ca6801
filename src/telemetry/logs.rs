//! Logs go to stderr, so that stdout carries only a command's output (plans, YAML, JSON). They are coloured
//! only when stderr is a terminal: a file, a pipe or a log collector would otherwise store the ANSI escape
//! codes as text. `NO_COLOR` (https://no-color.org) turns colour off on a terminal too.

use std::io::IsTerminal;

/// Installs the process's log subscriber: `level` is an `EnvFilter` directive (`info`, `orgkeeper=debug`),
/// an invalid one falls back to `info`; `json` gives one JSON object per line.
pub fn init(level: &str, json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let no_color = std::env::var_os("NO_COLOR");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // When stderr is a closed pipe, the subscriber would report each failed write with `eprintln!`, which
        // panics on that same pipe: inside the task that waits for SIGTERM, so the process never stopped. A
        // log line that cannot be written is dropped instead.
        .log_internal_errors(false)
        .with_ansi(colour(std::io::stderr().is_terminal(), no_color.as_deref()));
    // A subscriber already installed (tests that call this twice) stays.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything but the empty string.
fn colour(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_that_did_not_ask_for_none() {
        assert!(colour(true, None));
        assert!(!colour(false, None), "a file or a pipe gets no escape codes");
        assert!(!colour(true, Some(OsStr::new("1"))), "NO_COLOR=1");
        assert!(colour(true, Some(OsStr::new(""))), "an empty NO_COLOR does not count");
    }
}
