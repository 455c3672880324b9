//! The file watch follows the ways files are replaced: an editor's rename and a
//! Kubernetes ConfigMap's symlink swap.

use super::*;

#[tokio::test]
async fn an_editor_style_rename_triggers_a_reload() {
    let r = replicas(&["first", "second"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let before = generation(&proxy).await;
    write_atomically(
        proxy.config_path(),
        &with_backends(&proxy, &backend_list(&[&r[1]]), ""),
    );
    eventually("the renamed file is loaded", PATIENCE, || async {
        served_by(&proxy).await == "second"
    })
    .await;
    assert!(generation(&proxy).await > before);
}

#[tokio::test]
async fn a_configmap_style_symlink_swap_triggers_a_reload() {
    let r = replicas(&["first", "second"]).await;
    let proxy = TestProxy::start(&pool_config(&backend_list(&[&r[0]]), "")).await;
    let dir = proxy.dir().to_path_buf();
    // Kubernetes layout: modelgate.toml -> ..data/modelgate.toml, ..data -> ..v1
    let v1 = dir.join("..v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::copy(proxy.config_path(), v1.join("modelgate.toml")).unwrap();
    std::os::unix::fs::symlink("..v1", dir.join("..data")).unwrap();
    let link = dir.join("modelgate.toml.link");
    std::os::unix::fs::symlink("..data/modelgate.toml", &link).unwrap();
    std::fs::rename(&link, proxy.config_path()).unwrap();
    let before = generation(&proxy).await;
    assert_eq!(served_by(&proxy).await, "first");

    let v2 = dir.join("..v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(
        v2.join("modelgate.toml"),
        with_backends(&proxy, &backend_list(&[&r[1]]), ""),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    std::fs::remove_dir_all(&v1).unwrap();
    eventually("the swapped symlink target is loaded", PATIENCE, || async {
        served_by(&proxy).await == "second"
    })
    .await;
    assert!(generation(&proxy).await > before);
}
