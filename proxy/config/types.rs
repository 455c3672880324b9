//! The validated, typed configuration: what the rest of modelgate builds from.
//!
//! Every value here has already been checked; defaults are filled in. Nothing in this
//! file parses; see `load.rs` for how a TOML file becomes a [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A whole, valid configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this configuration was read from (as given on the command line).
    pub source: PathBuf,
    pub listen: Listen,
    pub log: Log,
    pub tls: Option<Tls>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Upstreams in file order; names are unique.
    pub upstreams: Vec<Upstream>,
}

impl Config {
    /// The upstream with this name, if defined.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// `[listen]`: the sockets modelgate serves on.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    /// Plain HTTP (HTTP/1.1 and h2c on one port).
    pub http: Option<SocketAddr>,
    /// HTTPS; only valid together with `[tls]`.
    pub https: Option<SocketAddr>,
    /// Admin and metrics listener.
    pub admin: Option<SocketAddr>,
    /// Bearer token file; required when `admin` is not a loopback address.
    pub admin_token_file: Option<PathBuf>,
    pub redirect_http_to_https: bool,
    /// How long in-flight requests may run on after SIGTERM. Default 30 s.
    pub shutdown_grace: Duration,
    /// Threads serving requests; 0 means one per core.
    pub workers: usize,
    /// Connection and request-head limits on the proxy listeners.
    pub limits: ConnLimits,
}

/// `[listen]` limits that protect the proxy from too many or too slow clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open client connections across the proxy listeners; 0 = unlimited.
    pub max_connections: usize,
    /// Open client connections from one IP address; 0 = unlimited.
    pub max_connections_per_ip: usize,
    /// A request head must arrive whole within this long (of the connection's start,
    /// or of its first byte on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body (408 beyond), as nginx's
    /// `client_body_timeout`.
    pub body_read_timeout: Duration,
    /// An idle kept-alive connection is closed after this long.
    pub keepalive_timeout: Duration,
    /// Most request header fields accepted (431 beyond).
    pub max_header_count: usize,
    /// Largest request head accepted, in bytes (431 beyond).
    pub max_header_bytes: usize,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    pub access: AccessLog,
}

/// Where the access log goes.
#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    Stderr,
    Off,
    File(PathBuf),
}

/// `[tls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    pub certs: CertSource,
}

/// Where certificates come from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    /// A directory of `NAME.crt` + `NAME.key` pairs (resolved relative to the config file).
    Dir(PathBuf),
    /// An explicit list of pairs.
    List(Vec<CertPair>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Served when SNI matches nothing; at most one pair may set it.
    pub default: bool,
}

/// `[[route]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub host: Option<HostMatch>,
    /// Path prefix, always starting with `/`.
    pub path: String,
    pub upstream: String,
    pub strip_prefix: bool,
    /// Largest accepted request body in bytes; `None` = unlimited.
    pub max_body: Option<u64>,
    pub rate_limit: Option<RateLimit>,
    pub auth: Option<Auth>,
    /// Model routing and OpenAI API handling.
    pub openai: RouteOpenAi,
}

/// The OpenAI-facing keys of a route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteOpenAi {
    /// `model`: exact names matched against the JSON body's `model`.
    pub models: Vec<String>,
    /// `model_prefix`: name prefixes matched when no exact name does (longest wins).
    pub model_prefixes: Vec<String>,
    pub api: Api,
    /// Ask streams for their usage chunk and hide it from clients that did not.
    pub stream_usage: bool,
    /// A queued stream gets its headers and `: keep-alive` comments this often.
    pub sse_keepalive: Option<Duration>,
}

impl RouteOpenAi {
    /// True when the route matches on the body's `model`.
    pub fn routes_by_model(&self) -> bool {
        !self.models.is_empty() || !self.model_prefixes.is_empty()
    }
}

/// `api`: what the clients of a route speak.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Api {
    /// Any HTTP; errors in modelgate's own shape.
    #[default]
    Plain,
    /// The OpenAI HTTP API: OpenAI-shaped errors, `GET /v1/models`, token accounting.
    OpenAi,
}

impl Api {
    /// The spelling used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Api::Plain => "plain",
            Api::OpenAi => "openai",
        }
    }
}

/// `wake = { url, method }`: called once per cold period of an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Wake {
    pub url: http::Uri,
    pub method: http::Method,
}

/// How a route matches the request host (always stored lower-case, without port).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    /// `api.example.com`
    Exact(String),
    /// `*.example.com`, stored as the suffix `.example.com`.
    Wildcard(String),
}

/// `rate_limit = { requests_per_second, burst, key, max_keys }`: GCRA per key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// Requests allowed at once on top of the steady rate (the bucket size).
    pub burst: u32,
    pub key: RateKey,
    /// Most keys tracked at once; keys beyond it share one bucket until idle keys are evicted.
    pub max_keys: usize,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client's IP address.
    ClientAddr,
    /// A request header (lower-case name); requests without it share one bucket.
    Header(String),
    /// The authenticated consumer (API key name or JWT `sub`); needs `auth` on the route.
    Consumer,
}

/// A per-request key: the client address or a request header (lower-case name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKey {
    ClientAddr,
    Header(String),
}

/// `auth = { ... }` on a route.
#[derive(Debug, Clone, PartialEq)]
pub struct Auth {
    pub method: AuthMethod,
    /// Remove `Authorization` and `X-API-Key` before the request goes to a replica.
    pub strip_credentials: bool,
}

/// How a route checks credentials.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthMethod {
    /// A file of API keys (`KEY` or `NAME:KEY` per line), re-read when it changes.
    ApiKeysFile(PathBuf),
    Jwt(Jwt),
}

/// `jwt = { ... }`: signed tokens in `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq)]
pub struct Jwt {
    pub key: JwtKey,
    /// Required `iss` claim, when set.
    pub issuer: Option<String>,
    /// Required `aud` claim (one of the token's audiences), when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Where the key that verifies JWT signatures comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtKey {
    /// HS256 with the secret in this environment variable.
    SecretEnv(String),
    /// An RSA, EC (P-256/P-384) or Ed25519 public key in a PEM file.
    PublicKey(PathBuf),
    /// A JSON Web Key Set fetched from `url` and refreshed every `refresh`.
    Jwks { url: String, refresh: Duration },
}

/// `[upstream.NAME]`: a pool of replicas of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    pub backends: BackendSource,
    pub protocol: Protocol,
    pub balance: Balance,
    /// For `consistent_hash`; defaults to the client address.
    pub hash_key: RequestKey,
    /// Per backend; 0 = unlimited (or learned, with `max_inflight_auto`).
    pub max_inflight: u32,
    /// `max_inflight = "auto"`: each replica's limit is learned between these bounds.
    pub max_inflight_auto: Option<AutoLimit>,
    pub queue: Queue,
    /// Other backends tried after the first (default 1).
    pub retries: u32,
    pub retry_non_idempotent: bool,
    /// Caps retries at a share of recent requests, so retries cannot multiply an outage.
    pub retry_budget: RetryBudget,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub idle_timeout: Duration,
    pub eject: Option<Eject>,
    pub slow_start: Duration,
    pub health: Option<HealthCheck>,
    pub tls: UpstreamTls,
    /// Requests wait this long for a first ready replica instead of 503 at once.
    pub hold: Option<Duration>,
    pub wake: Option<Wake>,
    /// `[upstream.NAME.load]`: the replicas' own load reports.
    pub load: Option<LoadReports>,
    /// The wait queue serves these classes highest first.
    pub priority: Option<super::Priority>,
    /// The wait queue serves these requesters fairly within a class.
    pub fair_share: Option<super::FairShare>,
    /// Set with `balance = "cache_affinity"`.
    pub affinity: Option<CacheAffinity>,
}

/// `balance = "cache_affinity"` and its `affinity_*` keys.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheAffinity {
    pub key: AffinityKey,
    /// Share (0..=1) of a request's prefix blocks a remembered match must cover.
    pub threshold: f64,
    pub guard: AffinityGuard,
    /// Prefix blocks remembered per upstream (`affinity_blocks`), the memory bound.
    pub blocks: usize,
}

/// What a request's cache affinity is computed from (`affinity_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityKey {
    /// The OpenAI body's `messages` (role and text of each) or `prompt`.
    Prompt,
    /// A request header's value (lower-case name), e.g. a session id.
    Header(String),
}

/// The fallback balance guard of cache affinity (`affinity_guard = { abs = 4, rel = 1.5 }`),
/// used when the replicas' capacity is unknown (no `max_inflight`, no queue reported)
/// or when the request would queue on every replica:
/// the replica holding a request's prefix is passed over when its load exceeds the least
/// loaded replica's by more than `abs` requests and is more than `rel` times it. With a
/// known capacity the guard is whether the request would queue there instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AffinityGuard {
    pub abs: u32,
    pub rel: f64,
}

impl Default for AffinityGuard {
    /// SGLang's router uses abs 64 / rel 1.5 on GPU engines batching hundreds of
    /// requests; replicas that run a handful at once get abs 4.
    fn default() -> Self {
        AffinityGuard { abs: 4, rel: 1.5 }
    }
}

/// The bounds of a learned in-flight limit (`max_inflight_min`, `max_inflight_max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoLimit {
    /// At least 1.
    pub min: u32,
    /// At least `min`.
    pub max: u32,
}

/// `[upstream.NAME.load]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReports {
    /// Ask for and read ORCA `endpoint-load-metrics` response headers.
    pub orca: bool,
    /// Poll each replica's Prometheus page (`metrics = "/metrics"`).
    pub metrics: Option<MetricsPage>,
    /// How often a replica reports (and its page is polled); a report older than
    /// three of these is ignored.
    pub every: Duration,
}

/// A replica's Prometheus text page and the gauges read from it. A gauge not
/// named here is found by the engine's own names (vLLM, SGLang, TGI, Triton,
/// llama.cpp), detected from the page.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetricsPage {
    /// Request path, e.g. `/metrics`.
    pub path: String,
    /// `queue_metric`: requests waiting inside the replica.
    pub queue: Option<GaugeSelector>,
    /// `running_metric`: requests it is working on.
    pub running: Option<GaugeSelector>,
    /// `cache_metric`: KV cache in use, 0..1.
    pub cache: Option<GaugeSelector>,
}

/// A metric name with optional label matchers, as PromQL writes one:
/// `name` or `name{label="value", ...}`. Series of that name whose labels
/// include every matcher are read (and summed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GaugeSelector {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BackendSource {
    /// Every backend listed by IP address.
    Static(Vec<BackendAddr>),
    /// Some backends are host names (`backends`) or come from `discover`.
    Dns(Discovery),
}

/// Backends found by name: every A/AAAA record of each name is a backend, looked up
/// again every `every`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Discovery {
    pub names: Vec<NamedBackend>,
    /// Backends listed by IP address beside the names.
    pub fixed: Vec<BackendAddr>,
    pub every: Duration,
    /// The DNS server asked (`ip:port`); `None` for the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
}

/// `host:port` in `backends` or `discover.dns`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamedBackend {
    pub host: String,
    pub port: u16,
    /// The weight of each address the name resolves to.
    pub weight: u32,
}

impl std::fmt::Display for NamedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendAddr {
    pub addr: SocketAddr,
    /// 1..=1000, default 1.
    pub weight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    Https,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    LeastOutstanding,
    RoundRobin,
    ConsistentHash,
    CacheAffinity,
}

impl Protocol {
    /// Every protocol, in the order they are listed in messages.
    pub const ALL: [Protocol; 3] = [Protocol::Http1, Protocol::H2c, Protocol::Https];

    /// The spelling used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Https => "https",
        }
    }
}

impl Balance {
    /// Every balancing policy, in the order they are listed in messages.
    pub const ALL: [Balance; 4] = [
        Balance::LeastOutstanding,
        Balance::RoundRobin,
        Balance::ConsistentHash,
        Balance::CacheAffinity,
    ];

    /// The spelling used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Balance::LeastOutstanding => "least_outstanding",
            Balance::RoundRobin => "round_robin",
            Balance::ConsistentHash => "consistent_hash",
            Balance::CacheAffinity => "cache_affinity",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queue {
    pub size: usize,
    pub timeout: Duration,
}

/// `retry_budget = { percent = 20, window = "10s", min_retries = 10 }`: over the last
/// `window`, retries may be at most `percent` of requests (but `min_retries` are always allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    pub percent: u32,
    pub window: Duration,
    pub min_retries: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 20,
            window: Duration::from_secs(10),
            min_retries: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eject {
    pub consecutive: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
    /// Expected status; `None` means any 2xx.
    pub expect_status: Option<u16>,
    /// Also poll each replica's `/v1/models`.
    pub models: bool,
}

/// Settings for `protocol = "https"` upstreams.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub sni: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}
