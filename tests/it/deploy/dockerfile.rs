//! The Dockerfile, without Docker: its build stage builds what CI builds (same
//! lockfile, same features, nothing CI does not install), every file it copies
//! exists and makes a complete build context without what `.dockerignore` leaves
//! out, and the image runs the shipped
//! container config on the ports it exposes, as a non-root user, within docker
//! stop's default 10 s.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One instruction: its keyword (upper case) and the rest of its line(s).
#[derive(Debug, Clone)]
pub struct Instr {
    pub op: String,
    pub args: String,
}

/// The instructions of each stage, in order; comments dropped, `\` continuations joined.
pub fn stages(text: &str) -> Vec<Vec<Instr>> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        match t.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut out: Vec<Vec<Instr>> = Vec::new();
    for l in logical {
        let (op, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
        let instr = Instr {
            op: op.to_ascii_uppercase(),
            args: args.trim().to_string(),
        };
        if instr.op == "FROM" || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().unwrap().push(instr);
    }
    out
}

/// `COPY [--flags] SRC... DEST` as (flags, sources, dest).
pub fn copy_parts(args: &str) -> (Vec<String>, Vec<String>, String) {
    let words: Vec<String> = args.split_whitespace().map(String::from).collect();
    let (flags, rest): (Vec<String>, Vec<String>) =
        words.into_iter().partition(|w| w.starts_with("--"));
    let (dest, srcs) = rest.split_last().unwrap();
    (flags, srcs.to_vec(), dest.clone())
}

/// An exec-form (`["a", "b"]`) instruction's words.
pub fn exec_form(args: &str) -> Vec<String> {
    serde_json::from_str(args).unwrap_or_else(|e| panic!("not exec form ({e}): {args}"))
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn dockerfile() -> Vec<Vec<Instr>> {
    stages(&std::fs::read_to_string(root().join("Dockerfile")).unwrap())
}

fn find<'a>(stage: &'a [Instr], op: &str) -> Vec<&'a Instr> {
    stage.iter().filter(|i| i.op == op).collect()
}

/// The paths `.dockerignore` leaves out of the build context, relative to the root.
/// Plain paths only: a pattern (`*`, `?`, `[`, `!`) would need Docker's matcher.
fn docker_ignored() -> Vec<PathBuf> {
    let text = std::fs::read_to_string(root().join(".dockerignore")).expect(".dockerignore");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            assert!(!l.contains(['*', '?', '[', '!']), "a pattern: {l}");
            PathBuf::from(l.trim_matches('/'))
        })
        .collect()
}

/// Copies `from` (a path under the root) to `to` as `docker build` sends it: without
/// what `.dockerignore` leaves out.
fn copy_tree(from: &Path, to: &Path, ignored: &[PathBuf]) {
    let rel = from.strip_prefix(root()).unwrap();
    if ignored.iter().any(|i| rel.starts_with(i)) {
        return;
    }
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let p = e.unwrap().path();
            copy_tree(&p, &to.join(p.file_name().unwrap()), ignored);
        }
    } else {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from, to).unwrap();
    }
}

/// The build context leaves out build output, the fuzz corpus and findings, git's
/// history and local keys (what git ignores), but nothing the Dockerfile copies; the
/// image has one tag everywhere the docs and manifests name it.
#[test]
fn build_context_leaves_out_what_the_image_does_not_need() {
    let ignored = docker_ignored();
    for must in [
        ".git",
        "target",
        "tests/fuzz/target",
        "tests/fuzz/corpus",
        "tests/fuzz/artifacts",
        "certs",
        "config/kubernetes/tls.key",
        "config/kubernetes/admin-token",
    ] {
        assert!(
            ignored.iter().any(|i| Path::new(must).starts_with(i)),
            ".dockerignore does not leave out {must}"
        );
    }
    for stage in dockerfile() {
        for c in find(&stage, "COPY") {
            let (flags, srcs, _) = copy_parts(&c.args);
            if flags.iter().any(|f| f.starts_with("--from")) {
                continue;
            }
            for src in srcs {
                assert!(
                    !ignored.iter().any(|i| Path::new(&src).starts_with(i)),
                    "the Dockerfile copies {src}, which .dockerignore leaves out"
                );
            }
        }
    }

    let header = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let tag = header
        .lines()
        .find_map(|l| l.split_once("docker build -t ").map(|(_, t)| t))
        .and_then(|t| t.split_whitespace().next())
        .expect("the Dockerfile's header shows its build command")
        .to_string();
    // Image references in text: `modelgate:TAG` after a space, quote or backtick.
    for file in ["Dockerfile", "README.md", "config/compose.yaml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for (i, line) in text.lines().enumerate() {
            for (pos, _) in line.match_indices("modelgate:") {
                let before = line[..pos].chars().next_back();
                if !matches!(before, None | Some(' ' | '"' | '`' | '\'')) {
                    continue;
                }
                let word: String = line[pos..]
                    .chars()
                    .take_while(|c| !c.is_whitespace() && !matches!(c, '`' | '"' | '\''))
                    .collect();
                if word.len() > "modelgate:".len() {
                    assert_eq!(word, tag, "{file}:{}: not the Dockerfile's tag", i + 1);
                }
            }
        }
    }
    // Kubernetes gets the image through kustomize's `images:`.
    let kustomization =
        std::fs::read_to_string(root().join("config/kubernetes/kustomization.yaml")).unwrap();
    let (name, version) = tag.split_once(':').unwrap();
    assert!(
        kustomization.contains(&format!("newName: {name}"))
            && kustomization.contains(&format!("newTag: {version}")),
        "kustomization.yaml does not set the image to {tag}"
    );
}

/// The build stage: copies only files that exist, which form a complete context (the
/// manifest's targets, the vendored crates, the build options of `.cargo/config.toml`), and `cargo` accepts the lockfile as it is
/// (`--locked`), offline, as CI's build uses it. Like CI, it installs no system package,
/// and it builds the default features CI tests.
#[test]
fn build_stage_builds_what_ci_builds_from_files_that_exist() {
    let stages = dockerfile();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let build = &stages[0];
    let from = &build[0].args;
    assert!(
        from.starts_with("rust:"),
        "build stage is not the Rust image: {from}"
    );
    assert!(
        from.ends_with(" AS build") || from.ends_with(" as build"),
        "{from}"
    );
    // A pinned toolchain must not be older than the manifest's rust-version.
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let rust_version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let tag = from
        .split(':')
        .nth(1)
        .unwrap()
        .split(['-', ' '])
        .next()
        .unwrap();
    let parse = |v: &str| -> Vec<u32> { v.split('.').map(|p| p.parse().unwrap()).collect() };
    let (image, wanted) = (parse(tag), parse(&rust_version));
    if image.len() > 1 {
        assert!(
            image >= wanted,
            "rust:{tag} is older than rust-version {rust_version}"
        );
    }

    let workdir = find(build, "WORKDIR")
        .last()
        .map(|w| w.args.clone())
        .unwrap_or_else(|| "/".into());
    let context = tempfile::tempdir().unwrap();
    let ignored = docker_ignored();
    for c in find(build, "COPY") {
        let (flags, srcs, dest) = copy_parts(&c.args);
        assert!(flags.is_empty(), "{c:?}");
        for src in srcs {
            let from = root().join(&src);
            assert!(
                from.exists(),
                "the Dockerfile copies {src}, which does not exist"
            );
            let dest = Path::new(&dest);
            let dest = if dest.is_absolute() {
                dest.strip_prefix(&workdir).unwrap().to_path_buf()
            } else {
                dest.to_path_buf()
            };
            let target = if c.args.trim_end().ends_with('/') && from.is_file() {
                context.path().join(&dest).join(from.file_name().unwrap())
            } else {
                context.path().join(&dest)
            };
            copy_tree(&from, &target, &ignored);
        }
    }

    // The allocator options (`.cargo/config.toml`'s `[env]`) are compiled in: the image's
    // build must read the same file from the directory it builds in, and set none of
    // its own.
    let cargo_config = std::fs::read(root().join(".cargo/config.toml")).unwrap();
    assert_eq!(
        std::fs::read(context.path().join(".cargo/config.toml")).ok(),
        Some(cargo_config),
        "the build stage does not copy .cargo/config.toml to {workdir}/.cargo/"
    );
    for i in build {
        assert!(
            !i.args.contains("MALLOC_CONF"),
            "the build stage sets allocator options of its own: {i:?}"
        );
    }

    let runs: Vec<&Instr> = find(build, "RUN");
    let cargo = runs
        .iter()
        .find(|r| r.args.contains("cargo build"))
        .expect("the build stage runs cargo build");
    for flag in ["--release", "--locked", "--bin modelgate"] {
        assert!(
            cargo.args.contains(flag),
            "cargo build without {flag}: {}",
            cargo.args
        );
    }
    for flag in ["--features", "--no-default-features", "--all-features"] {
        assert!(
            !cargo.args.contains(flag),
            "CI tests default features only: {}",
            cargo.args
        );
    }
    // CI builds with the Rust toolchain alone (`.ci/run` installs no system package
    // for the build), so the image's build stage installs none either.
    for r in &runs {
        assert!(
            !r.args.contains("apt-get install"),
            "the build installs system packages CI does not: {}",
            r.args
        );
    }
    // pingora-core is vendored with a pure-Rust zlib: nothing needs cmake any more.
    assert!(runs.iter().all(|r| !r.args.contains("cmake")), "{runs:?}");
    // CI holds the lockfile to `--locked` too, before any cargo command that would
    // rewrite a stale one (as `cargo test` does, which then hides it from this test).
    let ci = std::fs::read_to_string(root().join(".ci/run")).unwrap();
    let commands: Vec<&str> = ci
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("cargo "))
        .collect();
    assert!(
        commands.first().is_some_and(|c| c.contains("--locked")),
        ".ci/run does not check the lockfile with --locked first: {commands:?}"
    );

    // The context is complete and the lockfile current: what `cargo build --locked`
    // checks before compiling, from the copied files only.
    // Only this platform's packages: the lockfile also lists crates for other targets,
    // which a build here never downloads, so --offline cannot resolve them.
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host triple");
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", &host])
        .current_dir(context.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo metadata --locked in the Docker build context failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pkg = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "modelgate")
        .unwrap();
    for target in pkg["targets"].as_array().unwrap() {
        let src = target["src_path"].as_str().unwrap();
        assert!(
            Path::new(src).exists(),
            "target {} has no source in the context",
            target["name"]
        );
    }
}

/// The runtime stage: non-root, the binary the build made, the container config,
/// every listener exposed, SIGTERM with a drain that fits docker stop's 10 s.
#[test]
fn runtime_stage_runs_the_container_config() {
    let stages = dockerfile();
    let run = &stages[1];
    let user = find(run, "USER").last().expect("USER").args.clone();
    let uid: u32 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("a numeric USER");
    assert_ne!(uid, 0, "runs as root");

    let mut binary = None;
    let mut config = None;
    for c in find(run, "COPY") {
        let (flags, srcs, dest) = copy_parts(&c.args);
        if flags.iter().any(|f| f == "--from=build") {
            let src = &srcs[0];
            assert!(
                find(&stages[0], "RUN")
                    .iter()
                    .any(|r| r.args.contains(src.as_str())),
                "{src} is not made by the build stage"
            );
            binary = Some(dest);
        } else {
            assert_eq!(srcs, ["config/container.toml"], "{c:?}");
            assert!(root().join(&srcs[0]).exists());
            config = Some(dest);
        }
    }
    let (binary, config) = (binary.expect("the binary"), config.expect("the config"));
    let entry = exec_form(&find(run, "ENTRYPOINT")[0].args);
    assert_eq!(entry, [binary]);
    let cmd = exec_form(&find(run, "CMD")[0].args);
    assert_eq!(cmd, ["run", "-c", config.as_str()]);
    assert_eq!(find(run, "STOPSIGNAL")[0].args, "SIGTERM");

    let loaded = modelgate::config::load(&root().join("config/container.toml")).unwrap();
    let listen = &loaded.config.listen;
    let mut ports: Vec<u16> = [listen.http, listen.https, listen.admin]
        .into_iter()
        .flatten()
        .map(|a| a.port())
        .collect();
    ports.sort();
    let mut exposed: Vec<u16> = find(run, "EXPOSE")
        .iter()
        .flat_map(|e| e.args.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    exposed.sort();
    assert_eq!(
        exposed, ports,
        "EXPOSE must list every listener of container.toml"
    );
    assert!(
        listen.http.unwrap().ip().is_unspecified(),
        "the container serves on 0.0.0.0"
    );
    assert!(
        listen.admin.unwrap().ip().is_loopback() || listen.admin_token_file.is_some(),
        "admin off loopback without a token"
    );
    // The drain (shutdown_grace) plus pingora's 1 s to close fits docker stop's default.
    assert!(
        listen.shutdown_grace + Duration::from_secs(1) < Duration::from_secs(10),
        "shutdown_grace {:?} does not fit docker stop's 10 s",
        listen.shutdown_grace
    );
}
