//! The outside programs some tests drive (curl, openssl, promtool, Chromium), found on
//! `PATH` or, on a bare Debian machine, installed the first time a test needs them, so
//! `cargo test` alone is enough.
//!
//! - promtool comes out of Debian's `prometheus` package without installing it (the
//!   package would start a Prometheus server): `apt-get download` and `dpkg-deb -x`
//!   into `target/tmp/tools/`. It is a static binary.
//! - The others are installed with `apt-get install` when the tests run as root.
//!
//! Each program is looked up (and installed) once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// A program a test needs and the Debian package that has it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
    how: How,
}

#[derive(Debug, Clone, Copy)]
enum How {
    /// `apt-get install -y --no-install-recommends PACKAGE` (root only).
    Install,
    /// Unpack only the package's `usr/bin/PROGRAM` under the test target dir.
    Extract,
}

pub const CURL: Tool = Tool {
    program: "curl",
    package: "curl",
    how: How::Install,
};
pub const OPENSSL: Tool = Tool {
    program: "openssl",
    package: "openssl",
    how: How::Install,
};
pub const PROMTOOL: Tool = Tool {
    program: "promtool",
    package: "prometheus",
    how: How::Extract,
};
pub const CHROMIUM: Tool = Tool {
    program: "chromium",
    package: "chromium",
    how: How::Install,
};

/// A `Command` for `tool`, installing it first if it is missing. Panics with the
/// install line when it is missing and cannot be installed (not root, no apt-get).
pub fn command(tool: Tool) -> Command {
    Command::new(path(tool))
}

/// Where `tool` is, installing it first if it is missing.
pub fn path(tool: Tool) -> PathBuf {
    /// Per program: where it is, or why it cannot be had.
    type Found = Vec<(&'static str, Result<PathBuf, String>)>;
    static FOUND: Mutex<Found> = Mutex::new(Vec::new());
    let mut found = FOUND.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = found.iter().find(|(p, _)| *p == tool.program) {
        return r.clone().unwrap_or_else(|e| panic!("{e}"));
    }
    let r = locate(tool);
    found.push((tool.program, r.clone()));
    r.unwrap_or_else(|e| panic!("{e}"))
}

fn locate(tool: Tool) -> Result<PathBuf, String> {
    let extracted = tools_dir().join(tool.program);
    if let Some(p) = on_path(tool.program).or_else(|| extracted.is_file().then_some(extracted)) {
        return Ok(p);
    }
    let manual = format!(
        "{} is needed by this test and is missing; install Debian's `{}` package \
         (apt-get install -y {}) or run the tests as root to have it installed",
        tool.program, tool.package, tool.package
    );
    if !is_root() || on_path("apt-get").is_none() {
        return Err(manual);
    }
    eprintln!(
        "tests: installing {} (Debian package {})",
        tool.program, tool.package
    );
    apt_update()?;
    match tool.how {
        How::Install => {
            apt(&[
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                tool.package,
            ])?;
            on_path(tool.program).ok_or(manual)
        }
        How::Extract => extract(tool),
    }
}

/// `apt-get download` the package and unpack its `usr/bin/PROGRAM` into [`tools_dir`]
/// (renamed into place, so parallel test processes never see half a file).
fn extract(tool: Tool) -> Result<PathBuf, String> {
    let work = tempfile::tempdir_in(target_tmp()).map_err(|e| e.to_string())?;
    let fetched = Command::new("apt-get")
        .args(["download", "-qq", tool.package])
        .current_dir(work.path())
        .output()
        .map_err(|e| format!("apt-get download {}: {e}", tool.package))?;
    if !fetched.status.success() {
        return Err(format!(
            "apt-get download {}: {}",
            tool.package,
            String::from_utf8_lossy(&fetched.stderr)
        ));
    }
    let deb = std::fs::read_dir(work.path())
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {} wrote no .deb", tool.package))?;
    let root = work.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    let dest = tools_dir();
    std::fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
    let target = dest.join(tool.program);
    std::fs::rename(root.join("usr/bin").join(tool.program), &target)
        .map_err(|e| format!("{} not in package {}: {e}", tool.program, tool.package))?;
    Ok(target)
}

fn apt_update() -> Result<(), String> {
    static UPDATED: OnceLock<Result<(), String>> = OnceLock::new();
    UPDATED.get_or_init(|| apt(&["update", "-qq"])).clone()
}

/// Runs apt-get non-interactively, waiting for the dpkg lock rather than failing on it.
fn apt(args: &[&str]) -> Result<(), String> {
    run(Command::new("apt-get")
        .args(["-o", "DPkg::Lock::Timeout=600"])
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn target_tmp() -> &'static Path {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
}

fn tools_dir() -> PathBuf {
    target_tmp().join("tools")
}

/// Runs headless Chromium on `url` with `action` (`--dump-dom`, or
/// `--screenshot=FILE`) in a 1280x800 window, after the page's scripts had 4 s of
/// virtual time; returns its stdout. The flags are those that work as root on a
/// machine without outside network (no sandbox, no GPU, no background connections),
/// with a fresh profile each time.
pub fn chromium(url: &str, action: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = command(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,800",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(action)
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
