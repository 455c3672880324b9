//! A Python with PyYAML and kubernetes-validate for the manifest tests, installed from
//! PyPI into the target directory on first use, so a new machine needs only python3.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The kubernetes-validate release the manifests are checked with (it carries the
/// schemas of Kubernetes 1.25 to 1.37, so validation is offline once installed).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";

fn imports(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import yaml, kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// How to run Python with the packages: `Ok(python)`, or `Err(why)` when no Python
/// or pip exists on this machine at all (the caller skips, loudly). Any other failure,
/// such as PyPI not answering, panics: the test must not pass without checking.
pub fn python() -> Result<PathBuf, String> {
    // Tests run on threads of one process: one installs, the others wait for it
    // (the temp directory below is named by process id).
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let system = PathBuf::from("python3");
    if imports(&system) {
        return Ok(system);
    }
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = base.join("kubernetes-validate-1.37.0");
    let venv_python = venv.join("bin").join("python");
    if imports(&venv_python) {
        return Ok(venv_python);
    }
    if Command::new("python3").arg("--version").output().is_err() {
        return Err("python3 is not installed".into());
    }
    // Built aside and renamed into place, so a concurrent or interrupted run never
    // sees half an install.
    let tmp = base.join(format!("kubernetes-validate.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    if run(Command::new("python3").arg("-m").arg("venv").arg(&tmp)).is_ok() {
        let pip = tmp.join("bin").join("python");
        run(Command::new(&pip).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            KUBERNETES_VALIDATE,
        ]))
        .unwrap_or_else(|e| panic!("installing {KUBERNETES_VALIDATE} from PyPI: {e}"));
        if std::fs::rename(&tmp, &venv).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        // A venv's interpreter path is baked into its scripts, not into `python`.
        assert!(
            imports(&venv_python),
            "{} cannot import the packages",
            venv_python.display()
        );
        return Ok(venv_python);
    }
    // No venv module (Debian without python3-venv): pip alone, into a directory.
    let _ = std::fs::remove_dir_all(&tmp);
    if run(Command::new("python3").args(["-m", "pip", "--version"])).is_err() {
        return Err("python3 has neither the venv module nor pip".into());
    }
    let site = base.join("kubernetes-validate-site");
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&site)
        .arg(KUBERNETES_VALIDATE))
    .unwrap_or_else(|e| panic!("installing {KUBERNETES_VALIDATE} from PyPI: {e}"));
    let wrapper = base.join("python-kubernetes-validate");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nPYTHONPATH={} exec python3 \"$@\"\n",
            site.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    assert!(
        imports(&wrapper),
        "{} cannot import the packages",
        wrapper.display()
    );
    Ok(wrapper)
}

/// `yaml_docs.py` over `files`: each file's documents as JSON, and with `kubernetes`
/// versions the schema errors of every Kubernetes object.
pub fn yaml_docs(python: &Path, kubernetes: &[&str], files: &[PathBuf]) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/deploy/yaml_docs.py");
    let mut cmd = Command::new(python);
    cmd.arg(script);
    if !kubernetes.is_empty() {
        cmd.arg("--kubernetes").arg(kubernetes.join(","));
    }
    let out = cmd.args(files).output().unwrap();
    assert!(
        out.status.success(),
        "yaml_docs.py failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Prints why a check is skipped so that nobody mistakes the run for a pass.
pub fn skip_loudly(test: &str, why: &str) {
    let bar = "!".repeat(78);
    eprintln!(
        "\n{bar}\n!! SKIPPED {test}: {why}.\n!! Install python3 with pip (Debian: python3-pip python3-venv) to run it.\n{bar}\n"
    );
}
