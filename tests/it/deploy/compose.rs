//! config/compose.yaml, without Docker: it builds the repository's Dockerfile, runs
//! the container config the image carries (mounting only directories), finds three replicas of the model
//! service by the name and port that config uses, and its health checks and the
//! replicas' command work when run as written.

use std::process::{Command, Stdio};
use std::time::Duration;

use super::dockerfile::{copy_parts, dockerfile, exec_form, root};
use super::python::{python, skip_loudly, yaml_docs};
use crate::support::*;

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a healthcheck's `["CMD", "modelgate", ...]` with the test's binary.
fn healthcheck(test: &serde_json::Value, from: &str, to: &str) -> bool {
    let words: Vec<String> = serde_json::from_value(test.clone()).unwrap();
    assert_eq!(words[..2], ["CMD", "modelgate"], "{words:?}");
    let args: Vec<String> = words[2..].iter().map(|w| w.replace(from, to)).collect();
    Command::new(modelgate_bin())
        .args(&args)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[tokio::test]
async fn compose_file_agrees_with_the_image_and_its_config() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return skip_loudly("compose_file_agrees_with_the_image_and_its_config", &why),
    };
    let file = root().join("config/compose.yaml");
    let docs = yaml_docs(&python, &[], std::slice::from_ref(&file));
    let compose = &docs["files"][file.to_str().unwrap()][0];
    let services = &compose["services"];
    let (gate, model) = (&services["modelgate"], &services["model"]);

    // Both services run the image this repository's Dockerfile builds.
    for s in [gate, model] {
        let build = &s["build"];
        let context = root()
            .join("config")
            .join(build["context"].as_str().unwrap());
        assert_eq!(
            context.canonicalize().unwrap(),
            root().canonicalize().unwrap()
        );
        assert!(context.join(build["dockerfile"].as_str().unwrap()).exists());
        assert_eq!(s["image"], gate["image"]);
    }

    // modelgate runs the config the image carries where its CMD reads it; any mount is
    // a directory (a single-file mount keeps the old file after an editor's save).
    let image_config = {
        let stages = dockerfile();
        let cmd = stages[1].iter().rev().find(|i| i.op == "CMD").unwrap();
        exec_form(&cmd.args)[2].clone()
    };
    let copied = dockerfile()[1]
        .iter()
        .filter(|i| i.op == "COPY")
        .map(|i| copy_parts(&i.args))
        .find(|(_, _, dest)| *dest == image_config)
        .expect("the image copies its config where CMD reads it");
    for mount in gate["volumes"].as_array().into_iter().flatten() {
        let mount = mount.as_str().unwrap();
        let source = root().join("config").join(mount.split(':').next().unwrap());
        assert!(source.is_dir(), "{mount}: mount the config's directory");
    }
    let config_file = root().join(&copied.1[0]);
    let config = modelgate::config::load(&config_file).unwrap().config;
    let listen = &config.listen;
    let published: Vec<&str> = gate["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(
        published,
        [format!("{0}:{0}", listen.http.unwrap().port())],
        "publish the HTTP listener"
    );
    // Compose waits longer than the drain before it kills.
    let grace = gate["stop_grace_period"].as_str().unwrap();
    let grace = modelgate::config::parse_duration(grace).unwrap();
    assert!(
        grace >= listen.shutdown_grace + Duration::from_secs(1),
        "{grace:?}"
    );

    // The replicas: three of the service the config names, on the port it names.
    let up = &config.upstreams[0];
    let modelgate::config::BackendSource::Dns(d) = &up.backends else {
        panic!("container.toml lists addresses, not the service name");
    };
    assert_eq!(d.names.len(), 1);
    assert_eq!(
        d.names[0].host, "model",
        "the config must name the compose service"
    );
    assert_eq!(model["deploy"]["replicas"], 3);
    let command: Vec<String> = serde_json::from_value(model["command"].clone()).unwrap();
    let listen_at = format!("0.0.0.0:{}", d.names[0].port);
    assert_eq!(
        command,
        ["demo", "--replica-only", "--listen", listen_at.as_str()]
    );
    assert!(model["expose"][0].as_str().unwrap() == d.names[0].port.to_string());

    // The replica's command and health check, run as written (on a free port).
    let port = free_port();
    let local = format!("127.0.0.1:{port}");
    let args: Vec<String> = command
        .iter()
        .map(|a| a.replace(&listen_at, &local))
        .collect();
    let _replica = Child(
        Command::new(modelgate_bin())
            .args(&args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let test = &model["healthcheck"]["test"];
    let probe_from = format!("127.0.0.1:{}", d.names[0].port);
    eventually("the replica's health check passes", PATIENCE, || async {
        healthcheck(test, &probe_from, &local)
    })
    .await;

    // modelgate's health check asks /readyz on the admin listener of the config: run the
    // config (listeners moved to free ports, the service name to the replica above, as
    // `/readyz` waits for the name to resolve) and the check as written.
    let admin = listen.admin.unwrap();
    let service = d.names[0].to_string();
    let text = std::fs::read_to_string(&config_file)
        .unwrap()
        .replace(&listen.http.unwrap().to_string(), "{http}")
        .replace(&admin.to_string(), "{admin}")
        .replace(&format!("\"{service}\""), &format!("\"localhost:{port}\""));
    let proxy = TestProxy::start(&text).await;
    let test = &gate["healthcheck"]["test"];
    assert!(test.to_string().contains("/readyz"), "{test}");
    assert!(healthcheck(
        test,
        &admin.to_string(),
        &proxy.admin_addr().to_string()
    ));
    proxy.signal("TERM");
    eventually("the health check fails once draining", PATIENCE, || async {
        !healthcheck(test, &admin.to_string(), &proxy.admin_addr().to_string())
    })
    .await;
}
