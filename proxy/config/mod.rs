//! TEMPORARY stub
mod types;
pub use types::*;
use std::path::{Path, PathBuf};
pub struct ConfigError { pub file: PathBuf, pub line: usize, pub col: usize, pub key: String, pub message: String }
impl std::fmt::Display for ConfigError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { write!(f, "{}", self.message) } }
pub struct ConfigErrors(pub Vec<ConfigError>);
pub struct Loaded { pub config: Config, pub warnings: Vec<ConfigError> }
pub fn load(_path: &Path) -> Result<Loaded, ConfigErrors> { Err(ConfigErrors(vec![])) }
pub fn parse(_src: &str, _path: &Path) -> Result<Loaded, ConfigErrors> { Err(ConfigErrors(vec![])) }
pub fn summary(_c: &Config) -> String { String::new() }
