//! The `modelgate` command: parses the command line and hands over to the library.
//! This is the only place that prints results for humans and picks exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modelgate::app::App;
use modelgate::config;
use modelgate::logging::{self, LogFormat};

/// mimalloc: pingora allocates per request; it measured noticeably cheaper than glibc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "modelgate",
    version,
    about = "A reverse proxy and load balancer for model servers"
)]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "config/modelgate.toml")]
        config: PathBuf,
        /// Graceful upgrade: take over the listening sockets of the running modelgate
        /// (then send it SIGQUIT; it hands them over and drains).
        #[arg(short, long)]
        upgrade: bool,
        /// Socket the listeners are handed over on (default: one per config file in
        /// the temp directory); both processes must use the same.
        #[arg(long)]
        upgrade_sock: Option<PathBuf>,
    },
    /// Validate a config file, print a summary (exit 0) or every error (exit 1).
    Check {
        /// Config file.
        #[arg(short, long, default_value = "config/modelgate.toml")]
        config: PathBuf,
    },
    /// Start three demo model replicas and the proxy in front of them; no files needed.
    Demo {
        /// Plain HTTP listener.
        #[arg(long, default_value = modelgate::demo::HTTP_ADDR)]
        http: std::net::SocketAddr,
        /// HTTPS listener (a certificate for localhost is generated at start).
        #[arg(long, default_value = modelgate::demo::HTTPS_ADDR)]
        https: std::net::SocketAddr,
        /// Admin listener.
        #[arg(long, default_value = modelgate::demo::ADMIN_ADDR)]
        admin: std::net::SocketAddr,
        /// Serve one demo model replica on --listen and nothing else (no proxy), so the
        /// modelgate image can also stand in for a model server.
        #[arg(long, requires = "listen")]
        replica_only: bool,
        /// Where the replica listens, with --replica-only (e.g. 0.0.0.0:8000).
        #[arg(long, requires = "replica_only")]
        listen: Option<std::net::SocketAddr>,
        /// The replica's name in its answers, with --replica-only.
        #[arg(long, env = "HOSTNAME", default_value = "replica")]
        name: String,
    },
    /// GET a URL; exit 0 on a 2xx answer, 1 otherwise (container health checks,
    /// e.g. `modelgate probe http://127.0.0.1:9901/readyz`).
    Probe {
        /// A plain http:// URL.
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

/// mimalloc keeps emptied pages for a second and gives them back to the OS only on
/// later allocator activity, so the memory of thousands of connections that closed
/// stayed resident in an idle proxy. With `MIMALLOC_PURGE_DELAY=0` pages go back as
/// they empty. mimalloc reads its options before `main` runs, so the process
/// re-executes itself once with the variable set; an operator's own value is kept.
fn return_freed_memory_promptly() {
    use std::os::unix::process::CommandExt;
    const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| exe.clone().into_os_string());
    let err = std::process::Command::new(&exe)
        .arg0(arg0)
        .args(args)
        .env(PURGE_DELAY, "0")
        .exec();
    eprintln!(
        "warning: cannot re-execute {} with {PURGE_DELAY}=0 ({err}); freed memory returns to the OS later",
        exe.display()
    );
}

fn main() -> ExitCode {
    return_freed_memory_promptly();
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run {
            config,
            upgrade,
            upgrade_sock,
        } => run(
            &config,
            &modelgate::app::StartOptions {
                upgrade,
                upgrade_sock,
            },
        ),
        Command::Check { config } => check(&config),
        Command::Probe { url, timeout } => {
            match modelgate::probe::probe(&url, std::time::Duration::from_secs(timeout)) {
                Ok(code) if (200..300).contains(&code) => ExitCode::SUCCESS,
                Ok(code) => {
                    eprintln!("{url}: answered {code}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo {
            http,
            https,
            admin,
            listen,
            name,
            ..
        } => {
            let result = match listen {
                Some(listen) => modelgate::demo::run_replica(listen, &name),
                None => modelgate::demo::run(modelgate::demo::Addrs { http, https, admin }),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprint!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads and fully validates a file for `check`: syntax, keys, values, then everything
/// the server would build from it (pools, certificates). Returns the config and its warnings.
fn load(path: &std::path::Path) -> Result<(config::Loaded, Vec<String>), Vec<String>> {
    let loaded =
        config::load(path).map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let snapshot = modelgate::snapshot::Snapshot::build(&loaded.config);
    let certs = modelgate::tls::check(&loaded.config);
    let mut errors = snapshot.err().unwrap_or_default();
    let tls_warnings = match certs {
        Ok(w) => w,
        Err(e) => {
            errors.extend(e);
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    warnings.extend(tls_warnings);
    Ok((loaded, warnings))
}

fn report_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {w}");
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok((loaded, warnings)) => {
            report_warnings(&warnings);
            println!("{}: ok", path.display());
            print!("{}", config::summary(&loaded.config));
            ExitCode::SUCCESS
        }
        Err(errors) => report_errors(path, &errors, "nothing was changed"),
    }
}

/// Serves `path`. The config file is validated here; pools, routes and certificates
/// are validated once, by `App::build_with`, which reports them the same way.
fn run(path: &std::path::Path, opts: &modelgate::app::StartOptions) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            let errors: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
            return report_errors(path, &errors, "not starting");
        }
    };
    let warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    report_warnings(&warnings);
    match App::build_with(&loaded.config, opts) {
        Ok(app) => {
            log::info!(
                "modelgate {} serving {}",
                env!("CARGO_PKG_VERSION"),
                path.display()
            );
            app.run();
            ExitCode::SUCCESS
        }
        Err(e) => report_errors(path, &e.0, "not starting"),
    }
}

/// Prints every error, then a count and what happened, and fails.
fn report_errors(path: &std::path::Path, errors: &[String], outcome: &str) -> ExitCode {
    for e in errors {
        eprintln!("{e}");
    }
    eprintln!("{}: {} error(s); {outcome}", path.display(), errors.len());
    ExitCode::FAILURE
}
