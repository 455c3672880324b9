//! config/kubernetes/, without a cluster: every manifest (and each Secret the
//! kustomization generates) is valid against the Kubernetes schemas, offline, and the
//! Deployment, Services and Secrets agree with the config inside the ConfigMap on
//! ports, paths and file names, which `modelgate check` accepts when laid out as the
//! kubelet mounts it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::dockerfile::root;
use super::python::{python, skip_loudly, yaml_docs};
use crate::support::*;

/// Oldest and newest Kubernetes the manifests are checked against.
const KUBERNETES: [&str; 2] = ["1.29.0", "1.37.0"];

fn dir() -> PathBuf {
    root().join("config/kubernetes")
}

/// Every object of the kustomization, by kind and name, with the generated Secrets
/// built as kustomize builds them (from files the operator makes).
struct Objects(Vec<Value>);

impl Objects {
    fn get(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }
}

fn port_named<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port {name}"))
}

/// The kubelet's layout of a ConfigMap or Secret volume: the files live in a
/// timestamped directory, `..data` points at it, and each file is a link through it.
fn kubelet_volume(at: &Path, files: &[(&str, &[u8])]) {
    let stamp = at.join("..2026_11_30_08_00_00.000000001");
    std::fs::create_dir_all(&stamp).unwrap();
    for (name, bytes) in files {
        std::fs::write(stamp.join(name), bytes).unwrap();
    }
    std::os::unix::fs::symlink("..2026_11_30_08_00_00.000000001", at.join("..data")).unwrap();
    for (name, _) in files {
        std::os::unix::fs::symlink(format!("..data/{name}"), at.join(name)).unwrap();
    }
}

#[test]
fn manifests_are_valid_and_agree_with_the_config() {
    let python = match python() {
        Ok(p) => p,
        Err(why) => return skip_loudly("manifests_are_valid_and_agree_with_the_config", &why),
    };
    let kustomization_file = dir().join("kustomization.yaml");
    let k = yaml_docs(&python, &[], std::slice::from_ref(&kustomization_file));
    let k = &k["files"][kustomization_file.to_str().unwrap()][0];
    let namespace = k["namespace"].as_str().unwrap().to_string();

    // Every manifest in the directory is a resource of the kustomization, and back.
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = serde_json::from_value(k["resources"].clone()).unwrap();
    listed.sort();
    assert_eq!(listed, on_disk, "kustomization resources vs files");

    // The Secrets the kustomization generates, from files the operator makes and git
    // ignores; written out to be validated with the rest.
    let ignored = std::fs::read_to_string(dir().join(".gitignore")).unwrap();
    let mut secret_keys: HashMap<String, Vec<String>> = HashMap::new();
    let mut generated = Vec::new();
    assert_eq!(
        k["generatorOptions"]["disableNameSuffixHash"], true,
        "stable names for in-place updates"
    );
    for g in k["secretGenerator"].as_array().unwrap() {
        let mut data = serde_json::Map::new();
        for f in g["files"].as_array().unwrap() {
            let f = f.as_str().unwrap();
            let (key, file) = f.split_once('=').unwrap_or((f, f));
            assert!(
                ignored.lines().any(|l| l == file),
                "{file} is not in .gitignore"
            );
            data.insert(key.to_string(), json!("Y2hhbmdlIG1l"));
        }
        let name = g["name"].as_str().unwrap().to_string();
        secret_keys.insert(name.clone(), data.keys().cloned().collect());
        let mut secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": data,
        });
        if let Some(t) = g["type"].as_str() {
            secret["type"] = json!(t);
        }
        generated.push(secret);
    }
    let scratch = tempfile::tempdir().unwrap();
    let generated_file = scratch.path().join("generated-secrets.yaml");
    std::fs::write(
        &generated_file,
        generated
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join("\n---\n"),
    )
    .unwrap();

    let mut files: Vec<PathBuf> = on_disk.iter().map(|n| dir().join(n)).collect();
    files.push(generated_file);
    let out = yaml_docs(&python, &KUBERNETES, &files);
    let errors: Vec<String> = serde_json::from_value(out["errors"].clone()).unwrap();
    assert!(errors.is_empty(), "schema errors:\n{}", errors.join("\n"));
    let objects = Objects(
        out["files"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|docs| docs.as_array().unwrap().clone())
            .collect(),
    );

    // The Deployment and the config in the ConfigMap it mounts.
    let deploy = objects.get("Deployment", "modelgate");
    // The autoscaler owns the count: a `replicas` would be re-applied over its choice.
    assert!(
        deploy["spec"].get("replicas").is_none(),
        "the HPA owns replicas"
    );
    let pod = &deploy["spec"]["template"]["spec"];
    let labels = &deploy["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deploy["spec"]["selector"]["matchLabels"], labels);
    let c = &pod["containers"][0];
    let args: Vec<String> = serde_json::from_value(c["args"].clone()).unwrap();
    assert_eq!(args[..2], ["run", "-c"]);
    let config_path = PathBuf::from(&args[2]);
    let volume = |name: &str| -> &Value {
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = c["volumeMounts"].as_array().unwrap();
    // The mount holding `path`, its volume, and the file's name in it.
    let mounted = |path: &Path| -> (&Value, String) {
        let m = mounts
            .iter()
            .find(|m| path.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{} is not in a mounted volume", path.display()));
        assert!(
            m.get("subPath").is_none(),
            "subPath mounts never see updates"
        );
        (
            volume(m["name"].as_str().unwrap()),
            path.file_name().unwrap().to_string_lossy().into_owned(),
        )
    };
    let (config_volume, config_key) = mounted(&config_path);
    let cm_name = config_volume["configMap"]["name"].as_str().unwrap();
    let toml = objects.get("ConfigMap", cm_name)["data"][&config_key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no {config_key}"))
        .to_string();

    // Lay the volumes out as the kubelet does, under a scratch root, and check the config.
    let fs = scratch.path().join("root");
    let at = |p: &Path| fs.join(p.strip_prefix("/").unwrap());
    kubelet_volume(
        &at(config_path.parent().unwrap()),
        &[(&config_key, toml.as_bytes())],
    );
    // Paths into the mounted volumes move under the scratch root; others stay.
    // (Marked first, so that a mount such as /tmp cannot match the scratch root itself.)
    let rebased = mounts
        .iter()
        .fold(toml.clone(), |text, m| {
            let mount = m["mountPath"].as_str().unwrap();
            text.replace(&format!("\"{mount}"), &format!("\"\u{0}{mount}"))
        })
        .replace("\"\u{0}", &format!("\"{}", fs.display()));
    std::fs::write(
        at(config_path.parent().unwrap())
            .join("..data")
            .join(&config_key),
        &rebased,
    )
    .unwrap();
    // The admin token file: a key of the admin Secret. Without it the config is
    // refused (`run` could not start), naming the key.
    let (ok, out) = check_file(&at(&config_path));
    assert!(
        !ok && out.contains("listen.admin_token_file: cannot read"),
        "{out}"
    );
    let token_in_config: toml::Value = toml::from_str(&toml).unwrap();
    let token = PathBuf::from(
        token_in_config["listen"]["admin_token_file"]
            .as_str()
            .expect("a token off loopback"),
    );
    let (token_volume, token_key) = mounted(&token);
    let secret = token_volume["secret"]["secretName"].as_str().unwrap();
    assert!(
        secret_keys[secret].contains(&token_key),
        "{secret} has no key {token_key}"
    );
    kubelet_volume(
        &at(token.parent().unwrap()),
        &[(&token_key, b"s3cret-token\n")],
    );
    let loaded = modelgate::config::load(&at(&config_path)).unwrap().config;
    assert_eq!(loaded.listen.admin_token_file, Some(at(&token)));
    let from_fs = |p: &Path| PathBuf::from("/").join(p.strip_prefix(&fs).unwrap());

    // The certificate directory: the TLS Secret's pair, and nothing else (a ca.crt
    // alone would be a certificate without a key).
    let tls = loaded
        .tls
        .as_ref()
        .expect("the ConfigMap config serves HTTPS");
    let certs_dir = match &tls.certs {
        modelgate::config::CertSource::Dir(d) => from_fs(d),
        other => panic!("expected a certificate directory, found {other:?}"),
    };
    let (tls_volume, _) = mounted(&certs_dir.join("x"));
    let secret = tls_volume["secret"]["secretName"].as_str().unwrap();
    let items: Vec<String> = tls_volume["secret"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(i["key"], i["path"]);
            i["key"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(items, ["tls.crt", "tls.key"]);
    assert!(items.iter().all(|i| secret_keys[secret].contains(i)));
    let pair = crate::support::tls::TestCa::new().issue(&["models.example.com"]);
    kubelet_volume(
        &at(&certs_dir),
        &[
            ("tls.crt", pair.cert_pem.as_bytes()),
            ("tls.key", pair.key_pem.as_bytes()),
        ],
    );

    let (ok, out) = check_file(&at(&config_path));
    assert!(
        ok,
        "the ConfigMap's config, mounted as the kubelet does, fails check:\n{out}"
    );

    // Ports: each listener is a named container port; probes hit the admin listener.
    let listen = &loaded.listen;
    for (name, addr) in [
        ("http", listen.http),
        ("https", listen.https),
        ("admin", listen.admin),
    ] {
        let addr = addr.unwrap_or_else(|| panic!("no {name} listener"));
        assert!(
            addr.ip().is_unspecified(),
            "{name} must listen on 0.0.0.0 in a pod"
        );
        assert_eq!(port_named(c, name)["containerPort"], addr.port(), "{name}");
    }
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    // Prometheus' annotation discovery scrapes the admin listener's /metrics.
    let annotations = &deploy["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(
        annotations["prometheus.io/port"],
        port_named(c, "admin")["containerPort"].to_string()
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Draining: preStop, then shutdown_grace, then pingora's 1 s, within the grace period.
    let pre_stop: Vec<String> =
        serde_json::from_value(c["lifecycle"]["preStop"]["exec"]["command"].clone()).unwrap();
    assert_eq!(pre_stop[0], "sleep");
    let pre_stop = Duration::from_secs(pre_stop[1].parse().unwrap());
    let period = Duration::from_secs(pod["terminationGracePeriodSeconds"].as_u64().unwrap());
    assert!(
        period > pre_stop + listen.shutdown_grace + Duration::from_secs(1),
        "terminationGracePeriodSeconds {period:?} cuts the drain"
    );

    // Locked down: non-root, read-only root filesystem, resources set.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert!(c["resources"]["requests"]["cpu"].is_string());
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The Service sends to named ports the pod has; the HPA and PDB target the Deployment.
    let svc = objects.get("Service", "modelgate");
    assert_eq!(&svc["spec"]["selector"], labels);
    // Client addresses reach modelgate (per-IP limits, X-Forwarded-For), no extra hop.
    assert_eq!(svc["spec"]["type"], "LoadBalancer");
    assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
    for p in svc["spec"]["ports"].as_array().unwrap() {
        port_named(c, p["targetPort"].as_str().unwrap());
    }
    let hpa = objects.get("HorizontalPodAutoscaler", "modelgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "modelgate");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = objects.get("PodDisruptionBudget", "modelgate");
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);

    // The optional PodMonitor (Prometheus Operator; its CRD is not in the Kubernetes
    // schemas, so it is read, not validated): the pods, their admin port and path, and
    // the admin token's Secret key, in the kustomization's namespace.
    let monitor_file = dir().join("monitoring/podmonitor.yaml");
    let m = yaml_docs(&python, &[], std::slice::from_ref(&monitor_file));
    let m = &m["files"][monitor_file.to_str().unwrap()][0];
    assert_eq!(m["kind"], "PodMonitor");
    assert_eq!(m["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(m["metadata"]["namespace"], namespace.as_str());
    assert_eq!(&m["spec"]["selector"]["matchLabels"], labels);
    let endpoint = &m["spec"]["podMetricsEndpoints"][0];
    port_named(c, endpoint["port"].as_str().unwrap());
    assert_eq!(endpoint["port"], "admin");
    assert_eq!(endpoint["path"], "/metrics");
    let credentials = &endpoint["authorization"]["credentials"];
    let secret = credentials["name"].as_str().unwrap();
    let token_secret = mounted(&token).0["secret"]["secretName"].as_str().unwrap();
    assert_eq!(secret, token_secret);
    assert_eq!(credentials["key"].as_str().unwrap(), token_key);

    // `discover` names the headless Service of the model replicas, in the namespace the
    // kustomization deploys to, on the Service's port, which reaches the replicas' port.
    let up = &loaded.upstreams[0];
    let modelgate::config::BackendSource::Dns(d) = &up.backends else {
        panic!("the ConfigMap config must use discover");
    };
    let name = &d.names[0];
    let svc_name = name
        .host
        .strip_suffix(&format!(".{namespace}.svc.cluster.local"))
        .unwrap_or_else(|| panic!("{} is not a Service in namespace {namespace}", name.host));
    let headless = objects.get("Service", svc_name);
    assert_eq!(
        headless["spec"]["clusterIP"], "None",
        "replicas need a headless Service"
    );
    let svc_port = headless["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == name.port)
        .unwrap_or_else(|| panic!("{svc_name} has no port {}", name.port));
    let replicas = objects
        .0
        .iter()
        .find(|o| {
            o["kind"] == "Deployment"
                && o["spec"]["template"]["metadata"]["labels"] == headless["spec"]["selector"]
        })
        .expect("a Deployment behind the headless Service");
    let rc = &replicas["spec"]["template"]["spec"]["containers"][0];
    let target = port_named(rc, svc_port["targetPort"].as_str().unwrap());
    let health = up.health.as_ref().expect("replicas are health-checked");
    assert_eq!(
        rc["readinessProbe"]["httpGet"]["path"],
        health.path.as_str()
    );
    // The stand-in replica listens where its Service sends.
    let rargs: Vec<String> = serde_json::from_value(rc["args"].clone()).unwrap();
    assert_eq!(
        rargs,
        [
            "demo",
            "--replica-only",
            "--listen",
            &format!("0.0.0.0:{}", target["containerPort"])
        ]
    );
}
