//! Process logs on stderr: `RUST_LOG`-style filter, text or one JSON object per line;
//! and [`print`] and [`eprint`], the commands' output on stdout and stderr.

use std::io::Write;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global logger. `RUST_LOG` overrides the default filter (`info`).
pub fn init(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let mut line = serde_json::json!({
                "ts": buf.timestamp_millis().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            if let Some(fields) = line.as_object_mut() {
                let _ = record.key_values().visit(&mut Fields(fields));
            }
            writeln!(buf, "{line}")
        });
    }
    // A second init (tests, demo) keeps the first logger.
    let _ = builder.try_init();
}

/// Copies a record's key-value pairs (request id, route, backend, ...) into the JSON
/// line as fields of their own: numbers stay numbers.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        let v = match (value.to_u64(), value.to_i64(), value.to_f64()) {
            (Some(n), _, _) => serde_json::Value::from(n),
            (_, Some(n), _) => serde_json::Value::from(n),
            (_, _, Some(x)) => serde_json::Value::from(x),
            _ => serde_json::Value::from(value.to_string()),
        };
        self.0.insert(key.as_str().to_owned(), v);
        Ok(())
    }
}

/// Writes a command's output to stdout. A reader that went away (`modelgate check |
/// head -1`) ends the process quietly with success, as Unix tools do, where `print!`
/// would panic; any other write error ends it with a message and failure.
pub fn print(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        let _ = writeln!(std::io::stderr(), "cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Writes a command's message to stderr. Nothing is left to tell when stderr itself
/// is gone (`modelgate check 2>&- `, a closed pipe): the message is dropped, where
/// `eprint!` would panic, and the command ends with the status it would have had.
pub fn eprint(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}
