//! Logging for the OCI command line: text to stderr, or runc's JSON lines to
//! `--log`, which containerd reads to report why a command failed.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;

pub enum Format {
    Text,
    Json,
}

struct JsonLines {
    file: Mutex<File>,
}

#[derive(Default)]
struct Message {
    msg: String,
    fields: Vec<(String, String)>,
}

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.msg = format!("{value:?}");
        } else {
            self.fields
                .push((field.name().to_owned(), format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_owned();
        } else {
            self.fields
                .push((field.name().to_owned(), value.to_owned()));
        }
    }
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut m = Message::default();
        event.record(&mut m);
        let level = match *event.metadata().level() {
            Level::ERROR => "error",
            Level::WARN => "warning",
            Level::INFO => "info",
            _ => "debug",
        };
        let mut obj = serde_json::Map::new();
        obj.insert("level".into(), level.into());
        let msg = if m.fields.is_empty() {
            m.msg
        } else {
            let extra: Vec<String> = m.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{} ({})", m.msg, extra.join(", "))
        };
        obj.insert("msg".into(), msg.into());
        obj.insert(
            "time".into(),
            berth_runtime::crilog::format_timestamp(std::time::SystemTime::now()).into(),
        );
        if let Ok(mut f) = self.file.lock() {
            let _ = writeln!(f, "{}", serde_json::Value::Object(obj));
        }
    }
}

pub fn init(log: Option<&Path>, format: Format, debug: bool) {
    let filter = if debug { "debug" } else { "warn" };
    let env = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let file = log.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match (file, format) {
        (Some(f), Format::Json) => {
            let _ = tracing_subscriber::registry()
                .with(
                    JsonLines {
                        file: Mutex::new(f),
                    }
                    .with_filter(env),
                )
                .try_init();
        }
        (Some(f), Format::Text) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(env)
                .with_writer(Mutex::new(f))
                .with_ansi(false)
                .try_init();
        }
        (None, _) => {
            // Colour only for a person at a terminal: a runtime reading our
            // stderr (the CRI daemon, containerd) passes it on as text.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(env)
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .try_init();
        }
    }
}
