//! Logging: `tracing` with a filter from FQDND_LOG, plain or JSON lines on stderr. The last
//! warnings and errors are also kept in memory for `fqdnd status` ([`recent_errors`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("FQDND_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: log files and journald get plain text.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(RecentErrors);
    match format {
        LogFormat::Plain => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json().flatten_event(true)).init(),
    }
}

/// Warnings and errors kept for `fqdnd status`.
const KEPT: usize = 10;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The last warnings and errors logged (`2026-01-02T03:04:05Z WARN target: message k=v`), oldest first.
pub fn recent_errors() -> Vec<String> {
    RECENT.lock().unwrap_or_else(PoisonError::into_inner).iter().cloned().collect()
}

struct RecentErrors;

impl<S: Subscriber> Layer<S> for RecentErrors {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        let mut text = Line::default();
        event.record(&mut text);
        let line = format!(
            "{} {level} {}: {}{}",
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
            event.metadata().target(),
            text.message,
            text.fields
        );
        let mut recent = RECENT.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() == KEPT {
            recent.pop_front();
        }
        recent.push_back(line);
    }
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_are_kept_newest_last() {
        let subscriber = tracing_subscriber::registry().with(RecentErrors);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not kept");
            for i in 0..12 {
                tracing::warn!(path = "p.yaml", n = i, "bad policy");
            }
            tracing::error!("datapath did not converge");
        });
        let kept = recent_errors();
        assert_eq!(kept.len(), KEPT, "{kept:?}");
        assert!(kept.last().unwrap().contains("ERROR fqdnd::logging::tests: datapath did not converge"), "{kept:?}");
        assert!(kept[KEPT - 2].contains("WARN") && kept[KEPT - 2].ends_with("bad policy path=p.yaml n=11"), "{kept:?}");
        assert!(!kept.iter().any(|l| l.contains("not kept")));
    }
}
