//! The `modelgate` command: parses the command line and hands over to the library.
//! This is the only place that prints results for humans and picks exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use modelgate::config;
use modelgate::logging::{self, eprint, print, LogFormat};
use modelgate::App;

/// jemalloc: no more CPU per request than mimalloc in pinned A/B runs, without page
/// faults on the request path, and with the options compiled in from
/// `.cargo/config.toml` (background purging threads, a one-second dirty decay) it gives
/// the memory of closed connections back to the OS while the proxy is idle. README:
/// "Running it" (memory) and "Benchmarks".
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `print!` and `println!` through [`logging::print`]: a closed stdout ends the
/// command quietly instead of a panic.
macro_rules! print_ {
    ($($t:tt)*) => { print(format_args!($($t)*)) };
}
macro_rules! println_ {
    ($($t:tt)*) => { print(format_args!("{}\n", format_args!($($t)*))) };
}
/// `eprint!` and `eprintln!` through [`logging::eprint`]: a closed stderr does not
/// panic.
macro_rules! eprint_ {
    ($($t:tt)*) => { eprint(format_args!($($t)*)) };
}
macro_rules! eprintln_ {
    ($($t:tt)*) => { eprint(format_args!("{}\n", format_args!($($t)*))) };
}

#[derive(Parser)]
#[command(
    name = "modelgate",
    version,
    about = "A reverse proxy and load balancer for model servers",
    after_help = "Examples:
  modelgate demo                                  # demo replicas + the proxy; prints lines to try
  modelgate check -c config/modelgate.toml        # validate a config and print what it serves
  modelgate run -c config/modelgate.toml          # serve it (edits are picked up live)
  modelgate cert --dir certs localhost 127.0.0.1  # development certificates for HTTPS

Each command's --help has more."
)]
struct Cli {
    /// Log line format on stderr (filter with RUST_LOG, e.g. RUST_LOG=debug).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The config file of `run` and `check`: `-c FILE`, or `FILE` alone.
#[derive(clap::Args)]
struct ConfigFile {
    /// Config file.
    #[arg(short, long, default_value = "config/modelgate.toml")]
    config: PathBuf,
    /// Config file (the same as -c FILE).
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
}

impl ConfigFile {
    fn path(self) -> PathBuf {
        self.file.unwrap_or(self.config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a config file.
    #[command(after_help = "Examples:
  modelgate run -c config/modelgate.toml
  RUST_LOG=debug modelgate --log-format json run -c /etc/modelgate/modelgate.toml
  modelgate run -c modelgate.toml --upgrade   # take over from the running process, then: kill -QUIT <old pid>")]
    Run {
        #[command(flatten)]
        file: ConfigFile,
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
    #[command(after_help = "Examples:
  modelgate check -c config/examples/two-models.toml && modelgate run -c config/examples/two-models.toml
  modelgate check /etc/modelgate/modelgate.toml      # FILE alone works too

On success it prints each route with its upstream, each upstream with its backends,
caps, queue and health check; on failure every error as FILE:LINE:COL: key: what to do.")]
    Check {
        #[command(flatten)]
        file: ConfigFile,
    },
    /// Start three demo model replicas and the proxy in front of them; no files needed.
    #[command(after_help = "Examples:
  modelgate demo                                   # HTTPS 127.0.0.1:8443, HTTP :8080, admin :9901
  modelgate demo --http 127.0.0.1:18080 --https 127.0.0.1:18443 --admin 127.0.0.1:19901
  modelgate demo --replica-only --listen 0.0.0.0:8000   # one stand-in model server")]
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
    /// GET a URL; exit 0 on a 2xx answer, 1 otherwise (container health checks).
    #[command(after_help = "Example:
  modelgate probe http://127.0.0.1:9901/readyz --timeout 2")]
    Probe {
        /// A plain http:// URL.
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Write a development CA and a certificate for NAMEs, for `[tls] certs`.
    ///
    /// The certificate goes to DIR/NAME.crt + DIR/NAME.key (NAME: the first name), the
    /// layout `[tls] certs` reads; the CA that signs it to DIR/ca/ca.crt + ca.key.
    #[command(after_help = "Examples:
  modelgate cert localhost 127.0.0.1 ::1
  modelgate cert --dir certs api.example.com '*.example.com'

The CA is made on the first run and reused after, so clients that trust it keep
trusting new certificates. Trust it with curl --cacert DIR/ca/ca.crt, or system-wide
on Debian: cp DIR/ca/ca.crt /usr/local/share/ca-certificates/ && update-ca-certificates")]
    Cert {
        /// Directory to write into (created if missing); `[tls] certs` points at it.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Host names, `*.` wildcards or IP addresses the certificate is for.
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    match cli.command {
        Command::Run {
            file,
            upgrade,
            upgrade_sock,
        } => run(
            &file.path(),
            &modelgate::StartOptions {
                upgrade,
                upgrade_sock,
            },
        ),
        Command::Check { file } => check(&file.path()),
        Command::Cert { dir, names } => cert(&dir, &names),
        Command::Probe { url, timeout } => {
            match modelgate::probe(&url, std::time::Duration::from_secs(timeout)) {
                Ok(code) if (200..300).contains(&code) => ExitCode::SUCCESS,
                Ok(code) => {
                    eprintln_!("{url}: answered {code}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln_!("{e}");
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
                    eprint_!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Loads and fully validates a file for `check`: syntax, keys, values, then everything
/// the server would build from it ([`modelgate::prepare`], as `run` and reloads do).
/// Returns the config and its warnings.
fn load(path: &std::path::Path) -> Result<(config::Loaded, Vec<String>), Vec<String>> {
    let loaded =
        config::load(path).map_err(|e| e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>())?;
    let prepared = modelgate::prepare(&loaded.config, None)?;
    let mut warnings: Vec<String> = loaded.warnings.iter().map(|w| w.to_string()).collect();
    warnings.extend(prepared.warnings);
    Ok((loaded, warnings))
}

fn report_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln_!("warning: {w}");
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match load(path) {
        Ok((loaded, warnings)) => {
            report_warnings(&warnings);
            println_!("{}: ok", path.display());
            print_!("{}", config::summary(&loaded.config));
            ExitCode::SUCCESS
        }
        Err(errors) => report_errors(path, &errors, "nothing was changed"),
    }
}

/// Writes development certificates and says how to trust and use them.
fn cert(dir: &std::path::Path, names: &[String]) -> ExitCode {
    let w = match modelgate::write_dev_cert(dir, names) {
        Ok(w) => w,
        Err(e) => {
            eprintln_!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let ca = w.ca.cert.display();
    if w.ca.created {
        println_!(
            "made a development CA: {ca} (its key {} stays private)",
            w.ca.key.display()
        );
    } else {
        println_!("signed with the existing CA: {ca}");
    }
    println_!(
        "{} {} + {} for {} (valid until {})",
        if w.replaced { "replaced" } else { "wrote" },
        w.cert.display(),
        w.key.display(),
        names.join(", "),
        w.not_after
    );
    let host = names
        .iter()
        .find(|n| !n.starts_with('*'))
        .map_or("localhost", String::as_str);
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    print_!(
        "
Serve them: point [tls] certs at {dir} (in the config file, a relative path is
relative to the file). A running proxy picks up new or replaced pairs within seconds.

Trust the CA (development only; never on machines you do not own):
  curl:   curl --cacert {ca} https://{host}:8443/
  Debian: sudo cp {ca} /usr/local/share/ca-certificates/modelgate-dev-ca.crt && sudo update-ca-certificates
",
        dir = dir.display(),
    );
    ExitCode::SUCCESS
}

/// Serves `path`. The config file is validated here; pools, routes and certificates
/// by `App::build_with` through the same `prepare` as `check`.
fn run(path: &std::path::Path, opts: &modelgate::StartOptions) -> ExitCode {
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
        eprintln_!("{e}");
    }
    eprintln_!("{}: {} error(s); {outcome}", path.display(), errors.len());
    ExitCode::FAILURE
}
