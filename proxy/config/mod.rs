//! Configuration: loading a TOML file into a validated [`Config`], with every problem reported
//! at its line and column.
//!
//! `types` is the typed result, `load` (with `route` and `upstream`) builds it, `reader` walks
//! the TOML tree, `units` parses durations and sizes, `error` is the error type, and `summary`
//! renders a config for `modelgate check`.

mod advice;
mod affinity;
mod edge;
mod error;
mod load;
mod openai;
mod reader;
mod route;
mod schedule;
mod summary;
mod types;
mod units;
mod upstream;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::time::Duration;

pub use affinity::{DEFAULT_AFFINITY_BLOCKS, DEFAULT_AFFINITY_THRESHOLD};
pub use edge::{DEFAULT_LIMITS, DEFAULT_MAX_KEYS};
pub use error::{ConfigError, ConfigErrors};
pub use schedule::{FairShare, Priority, PriorityClass, MAX_CLASSES};
pub use summary::summary;
pub use types::*;
pub use units::{parse_duration, parse_size};

/// Default of `listen.shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A valid configuration and the warnings found while loading it.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<ConfigError>,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(src) => parse(&src, path),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            col: 0,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])),
    }
}

/// Validates configuration text. `path` is used only in messages and to resolve relative file
/// paths in the config (against its directory); nothing is read from disk.
pub fn parse(src: &str, path: &Path) -> Result<Loaded, ConfigErrors> {
    load::parse(src, path)
}
